// machat web page: one WebSocket to /ws speaking version 2 (docs/PROTOCOL.md sections 17 and
// 19): one connection in many rooms and direct conversations, each with its own log, unread
// and mention counts. No framework, no build step. Every piece of text that comes from a user
// or the server is inserted with textContent / createTextNode, never as HTML.
"use strict";

(function () {
  const KEEP = 300; // entries kept per room (older ones come back with "load older")
  const HISTORY = 50; // messages replayed on entering a room
  const OLDER = 50; // messages per "load older" page
  const RESUME_MAX = 300; // unread messages fetched at once on joining (else the last HISTORY)
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  const TAKEN_RETRIES = 8; // an automatic rejoin may race our own old connection's leave
  const LOGIN_KEY = "machat.login"; // {name, token, expires}: never the password
  const QUIET_KEY = "machat.quiet";
  const LAST_KEY = "machat.last"; // {name, room}: the form's defaults
  const GUEST_KEY = "machat.guest"; // a guest's rooms: {name, rooms: {room: {read, notify}}}
  const TAB_KEY = "machat.tab"; // this tab is chatting: {name, current} (a reload comes back)

  const $ = (id) => document.getElementById(id);
  const el = {};
  for (const id of ["login", "login-form", "name", "room", "login-error", "chat", "log",
    "members", "member-count", "composer", "input", "status", "where", "leave", "topic",
    "quiet", "members-toggle", "edit-topic", "password", "account", "account-name", "logout",
    "needs-account", "rooms-toggle", "sidebar", "room-list", "dm-list", "dm-form", "dm-name",
    "dm-hint", "new-room", "new-room-name", "browse", "room-browser", "all-rooms",
    "notify-enable", "notify", "notify-label", "form-logout"]) {
    el[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = $(id);
  }

  // Moderation events (docs/PROTOCOL.md section 18), as the room's text lines say them.
  const ACTS = new Set(["topic", "kick", "ban", "unban", "mute", "unmute", "op", "deop",
    "voice", "devoice", "invite", "mode", "delete", "wall"]);

  function actText(ev) {
    const who = ev.target || "an address";
    let tail = "";
    if (ev.until) tail += " until " + new Date(ev.until).toLocaleString();
    if (ev.reason) tail += ": " + ev.reason;
    switch (ev.type) {
      case "topic": return ev.text ? ev.actor + " set the topic: " + ev.text : ev.actor + " cleared the topic";
      case "kick": return ev.actor + " kicked " + who + tail;
      case "ban": return ev.actor + " banned " + who + tail;
      case "unban": return ev.actor + " unbanned " + who;
      case "mute": return ev.actor + " muted " + who + tail;
      case "unmute": return ev.actor + " unmuted " + who;
      case "op": return ev.actor + " made " + who + " an operator";
      case "deop": return ev.actor + " took operator from " + who;
      case "voice": return ev.actor + " gave " + who + " voice";
      case "devoice": return ev.actor + " took voice from " + who;
      case "invite": return ev.actor + " invited " + who;
      case "mode": return ev.actor + " set modes " + (ev.modes || "");
      case "delete": return ev.actor + " deleted a message";
      case "wall": return "notice from " + ev.actor + ": " + (ev.text || "");
      default: return "";
    }
  }

  // ---------- state ----------

  let me = null; // {name, person}: who this page chats as
  let wanted = false; // we want to be connected (false after Log out, /quit or a refusal)
  let ws = null;
  let welcomed = false; // the current socket's handshake was accepted
  let backoff = BACKOFF_MIN;
  let timer = null;
  let takenRetries = 0;
  let lastSent = ""; // given back to the message box if the server refuses it as too long
  let reqSeq = 0;
  const pending = new Map(); // req -> what we asked: {kind, room}
  const rooms = new Map(); // room name -> Room
  let current = null; // the room shown
  let firstRoom = null; // the room asked for on the form (joined even if no mark has it)

  // One room or direct conversation, as this page knows it.
  function newRoom(name) {
    return {
      name: name,
      with: null, // the other person of a direct conversation
      entries: [], // events shown in its log, oldest first
      ids: new Set(), // ids of the messages in `entries`
      last: 0, // highest message id seen
      markLast: 0, // the room's last id when the server last told us (marks)
      read: 0, // the last message id read (the account's, or this browser's for a guest)
      notify: "all",
      unread: 0,
      mentions: 0,
      approx: false, // more unread than the page has loaded
      members: new Set(),
      topic: "",
      op: false, // our rank here lets us use the operators' tools
      state: "new", // new -> joining -> joined (or gone)
      replay: null, // messages of the replay being received: {older, list}
      atStart: false, // the log reaches the room's first message
      loadingOlder: false,
      newFrom: -1, // the "new messages" line goes above the first message after this id
      fresh: false, // joined here for the first time: what its first replay shows counts as read
    };
  }

  // ---------- storage ----------

  function load(store, key) {
    try { return JSON.parse(store.getItem(key)); } catch (e) { return null; }
  }
  function save(store, key, value) {
    try { store.setItem(key, JSON.stringify(value)); } catch (e) { /* full or disabled */ }
  }
  function forget(store, key) {
    try { store.removeItem(key); } catch (e) { /* disabled */ }
  }

  // A guest's rooms and read positions live in this browser (a person's on the server).
  let guestTimer = null;
  function saveGuest() {
    if (!me || me.person || guestTimer !== null) return;
    guestTimer = setTimeout(saveGuestNow, 300);
  }
  function saveGuestNow() {
    clearTimeout(guestTimer);
    guestTimer = null;
    if (!me || me.person) return;
    const kept = {};
    for (const r of rooms.values()) {
      if (r.state !== "gone") kept[r.name] = { read: r.read, notify: r.notify };
    }
    save(localStorage, GUEST_KEY, { name: me.name, rooms: kept });
  }

  function saveTab() {
    if (me && wanted) save(sessionStorage, TAB_KEY, { name: me.name, current: current });
  }

  // ---------- rendering ----------

  function hhmm(ts) {
    const d = ts ? new Date(ts) : new Date();
    if (isNaN(d)) return "";
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function hue(name) {
    let h = 0;
    for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
    return h;
  }

  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }

  // A message's text as nodes: ```fenced blocks```, `inline code` and http(s) links, every
  // piece of text a text node (never markup); other schemes (javascript:, data:) stay text.
  // The element's textContent is the message's text but for the fences' backticks.
  function richText(text) {
    const out = span("text", "");
    const parts = text.split(/```/);
    parts.forEach((part, i) => {
      const fenced = i % 2 === 1 && i < parts.length - 1;
      if (fenced) {
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        code.textContent = part.replace(/^\n/, "");
        pre.appendChild(code);
        out.appendChild(pre);
        return;
      }
      if (i > 0 && i % 2 === 1) out.appendChild(document.createTextNode("```"));
      inline(out, part);
    });
    return out;
  }

  function inline(out, text) {
    const bits = text.split(/(`[^`\n]+`)/);
    for (const bit of bits) {
      if (bit.length > 2 && bit.startsWith("`") && bit.endsWith("`")) {
        const code = document.createElement("code");
        code.textContent = bit.slice(1, -1);
        out.appendChild(code);
      } else {
        links(out, bit);
      }
    }
  }

  function links(out, text) {
    const re = /\bhttps?:\/\/[^\s<>"']+/gi;
    let at = 0;
    for (const m of text.matchAll(re)) {
      const url = m[0].replace(/[.,;:!?)\]]+$/, "");
      let ok = false;
      try {
        const u = new URL(url);
        ok = u.protocol === "http:" || u.protocol === "https:";
      } catch (e) { ok = false; }
      if (!ok) continue;
      out.appendChild(document.createTextNode(text.slice(at, m.index)));
      const a = document.createElement("a");
      a.href = url;
      a.textContent = url;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      out.appendChild(a);
      at = m.index + url.length;
    }
    out.appendChild(document.createTextNode(text.slice(at)));
  }

  // Whether a message is addressed to `name`: `@Name` anywhere, or a line starting `Name:`/`Name,`.
  const mentionRes = new Map();
  function mentions(text, name) {
    if (!name) return false;
    let res = mentionRes.get(name);
    if (!res) {
      const esc = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      res = [new RegExp("(^|[^\\w@])@" + esc + "(?![\\w])", "iu"),
        new RegExp("^" + esc + "[:,]", "imu")];
      mentionRes.clear();
      mentionRes.set(name, res);
    }
    return res[0].test(text) || res[1].test(text);
  }

  function isMessage(ev) {
    return ev.type === "message" || ev.type === "action";
  }

  function day(ts) {
    const d = ts ? new Date(ts) : new Date();
    return isNaN(d) ? "" : d.toDateString();
  }

  function dayLabel(ts) {
    const d = new Date(ts);
    return d.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
  }

  function nameSpan(name) {
    const s = span("name", name);
    s.style.setProperty("--hue", String(hue(name)));
    return s;
  }

  // One event -> one .entry element.
  function render(ev) {
    const e = document.createElement("div");
    e.className = "entry " + ev.type;
    const time = document.createElement("time");
    const ts = ev.ts || ev.localTs;
    if (ts) {
      time.dateTime = ts;
      time.title = new Date(ts).toLocaleString(undefined, { dateStyle: "full", timeStyle: "medium" });
    }
    time.textContent = hhmm(ts);
    e.appendChild(time);
    const body = document.createElement("span");
    body.className = "body";
    switch (ev.type) {
      case "message":
        body.append(nameSpan(ev.name), richText(ev.text));
        break;
      case "action":
        body.append("* ", nameSpan(ev.name), " ", richText(ev.text));
        break;
      case "join":
        body.append(nameSpan(ev.name), " joined");
        break;
      case "leave":
        body.append(nameSpan(ev.name), " left");
        break;
      case "nick":
        body.append(nameSpan(ev.name), " is now ", nameSpan(ev.new));
        break;
      case "private":
        if (ev.from === me.name && ev.to !== me.name) {
          body.append("private to ", nameSpan(ev.to), ": ", span("text", ev.text));
        } else {
          body.append("private from ", nameSpan(ev.from), ": ", span("text", ev.text));
        }
        break;
      case "error":
        body.append(span("text", "error: " + ev.reason));
        break;
      case "notice":
        body.append(span("text", ev.text));
        break;
      case "who":
        body.append(span("text", ev.members.length + " in " + ev.room + ": " + ev.members.join(" ")));
        break;
      case "help":
        body.append(span("text", "commands: " + ev.commands.join(", ")));
        break;
      case "start":
        body.append(span("text", "the start of " + ev.room));
        break;
      default:
        if (ACTS.has(ev.type)) {
          e.classList.add("act");
          body.append(span("text", actText(ev)));
        } else {
          body.append(span("text", JSON.stringify(ev)));
        }
    }
    e.appendChild(body);
    if (isMessage(ev) && typeof ev.id === "number") {
      e.dataset.id = String(ev.id);
      e.dataset.msg = ev.room + "\n" + ev.id; // found again when it is deleted
      const r = rooms.get(ev.room);
      if (ev.name === me.name || (r && r.op)) {
        e.appendChild(tool("delete", "Delete this message", ev.room, "/delete " + ev.id));
      }
      if (ev.name === me.name) e.classList.add("mine");
      else if (mentions(ev.text, me.name)) e.classList.add("mention");
    }
    return e;
  }

  function nearBottom() {
    return el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 60;
  }

  // Others' joins and leaves in a row are one line ("3 joined, 1 left", the names on hover and
  // on a click), so a busy room's comings and goings do not push the conversation away.
  function presence(ev) {
    return (ev.type === "join" || ev.type === "leave") && ev.name !== me.name;
  }

  // The log as drawn: the day of the last entry (for the separators), and whether the "new
  // messages" line is in it.
  let lastDay = "";
  let lineDrawn = false;

  function separator(ev) {
    const ts = ev.ts || ev.localTs;
    const d = day(ts);
    if (!d || d === lastDay) return null;
    lastDay = d;
    const sep = document.createElement("div");
    sep.className = "day";
    sep.setAttribute("role", "separator");
    sep.textContent = dayLabel(ts);
    return sep;
  }

  function newLine() {
    const line = document.createElement("div");
    line.className = "new-line";
    line.setAttribute("role", "separator");
    line.textContent = "new messages";
    return line;
  }

  // Appends `ev`'s element to `into` (the log, or a fragment being built).
  function place(into, ev, r) {
    const prev = into.lastElementChild;
    if (presence(ev) && prev && prev.classList.contains("presence")) {
      const group = prev.group;
      group.push([ev.type, ev.name]);
      const joined = group.filter((g) => g[0] === "join").map((g) => g[1]);
      const left = group.filter((g) => g[0] === "leave").map((g) => g[1]);
      const parts = [];
      if (joined.length) parts.push(joined.length + " joined");
      if (left.length) parts.push(left.length + " left");
      const detail = (joined.length ? "joined: " + joined.join(", ") : "") +
        (joined.length && left.length ? "; " : "") + (left.length ? "left: " + left.join(", ") : "");
      prev.querySelector(".body").replaceChildren(span("text", parts.join(", ")),
        span("detail", " (" + detail + ")"));
      prev.title = detail;
      return;
    }
    const sep = separator(ev);
    if (sep) into.appendChild(sep);
    if (r && r.newFrom >= 0 && !lineDrawn && isMessage(ev) && ev.id > r.newFrom && ev.name !== me.name) {
      lineDrawn = true;
      into.appendChild(newLine());
    }
    const e = render(ev);
    if (presence(ev)) {
      e.classList.add("presence");
      e.group = [[ev.type, ev.name]];
      e.addEventListener("click", () => e.classList.toggle("open"));
    }
    into.appendChild(e);
  }

  // Draws the current room's whole log (on switching rooms, after a replay or older pages).
  function redraw(keepScroll) {
    queued = []; // drawn with the rest
    const r = rooms.get(current);
    const fromBottom = el.log.scrollHeight - el.log.scrollTop;
    const frag = document.createDocumentFragment();
    lastDay = "";
    lineDrawn = false;
    if (r) for (const ev of r.entries) place(frag, ev, r);
    el.log.replaceChildren(frag);
    if (keepScroll) {
      el.log.scrollTop = el.log.scrollHeight - fromBottom;
    } else {
      const line = el.log.querySelector(".new-line");
      if (line) line.scrollIntoView({ block: "center" });
      else el.log.scrollTop = el.log.scrollHeight;
    }
    atBottom = nearBottom();
    // A log that does not fill its box cannot be scrolled up: fetch older messages at once.
    if (!keepScroll && el.log.scrollHeight <= el.log.clientHeight + 80) setTimeout(loadOlder, 0);
  }

  // Adds an event to room `r`'s log (and to the screen if it is shown).
  function show(r, ev) {
    if (!ev.ts && !ev.localTs) ev.localTs = new Date().toISOString();
    r.entries.push(ev);
    if (r.entries.length > KEEP) {
      const gone = r.entries.splice(0, r.entries.length - KEEP);
      for (const g of gone) if (isMessage(g)) r.ids.delete(g.id);
      r.atStart = false;
    }
    if (r.name !== current) return;
    // Drawn at the next frame, with whatever else arrives before it: one layout of the log per
    // frame, not one per message (at 100 messages a second that was a core).
    queued.push(ev);
    if (queued.length === 1) requestAnimationFrame(flush);
  }

  // What arrived for the room shown since the last frame; whether its log is scrolled to the
  // bottom (kept from the scroll events, so a message does not make the browser lay out the log
  // to find out).
  let queued = [];
  let atBottom = true;

  function flush() {
    const batch = queued;
    queued = [];
    const r = rooms.get(current);
    if (!r || batch.length === 0) return;
    if (batch.length > KEEP) {
      redraw(!atBottom); // a hidden page's backlog: drawn from the room's log at once
      return;
    }
    const stick = atBottom;
    for (const ev of batch) place(el.log, ev, r);
    const extra = el.log.childElementCount - (KEEP + 40);
    for (let i = 0; i < extra; i++) el.log.firstElementChild.remove();
    if (stick) el.log.scrollTop = el.log.scrollHeight;
  }

  // A line of our own (not from the server) in the room shown.
  function local(text, cls) {
    const r = rooms.get(current);
    if (r) show(r, { type: cls || "notice", text: text, reason: text, room: r.name });
    else el.loginError.textContent = text;
  }

  // An operator's tool: a button whose label comes from the style sheet (so a member's entry
  // reads as its name alone), named for screen readers.
  function tool(act, label, room, command) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "tool";
    b.dataset.act = act;
    b.title = label;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      request({ type: "command", room: room, text: command });
    });
    return b;
  }

  function drawMembers() {
    const r = rooms.get(current);
    el.members.replaceChildren();
    const names = r ? Array.from(r.members).sort() : [];
    for (const n of names) {
      const li = document.createElement("li");
      li.appendChild(nameSpan(n));
      if (n === me.name) li.classList.add("me");
      else {
        if (r.op) {
          li.append(tool("kick", "Kick " + n, r.name, "/kick " + n),
            tool("mute", "Mute " + n + " for 10 minutes", r.name, "/mute " + n + " 10m"),
            tool("ban", "Ban " + n, r.name, "/ban " + n));
        }
        if (me.person && !r.with) {
          const b = document.createElement("button");
          b.type = "button";
          b.className = "dm";
          b.title = "Direct message " + n;
          b.setAttribute("aria-label", "Direct message " + n);
          b.addEventListener("click", () => openDm(n));
          li.append(b);
        }
      }
      el.members.appendChild(li);
    }
    el.memberCount.textContent = "(" + names.length + ")";
    el.membersToggle.textContent = "Members (" + names.length + ")";
    el.editTopic.hidden = !(r && r.op);
  }

  function showHeader() {
    const r = rooms.get(current);
    el.where.textContent = r ? (r.with ? "@" + r.with : "#" + r.name) : "";
    el.where.title = me ? "You are " + me.name : "";
    el.topic.textContent = r ? r.topic : "";
    el.topic.title = r && r.topic ? "Topic: " + r.topic : "";
    el.notify.value = r ? r.notify : "all";
    el.notifyLabel.hidden = !r;
  }

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
  }

  // ---------- the sidebar, counts and the title ----------

  function label(r) {
    return r.with ? r.with : "#" + r.name;
  }

  // The rooms in the sidebar's order: rooms by name, then conversations by the other's name.
  function ordered() {
    const list = Array.from(rooms.values()).filter((r) => r.state !== "gone");
    const plain = list.filter((r) => !r.with).sort((a, b) => a.name.localeCompare(b.name));
    const dms = list.filter((r) => r.with).sort((a, b) => a.with.localeCompare(b.with));
    return plain.concat(dms);
  }

  let sideQueued = false;
  function drawSideSoon() {
    if (sideQueued) return;
    sideQueued = true;
    requestAnimationFrame(() => { sideQueued = false; drawSide(); });
    // A hidden page gets no animation frames: the title must change all the same.
    if (document.hidden) setTimeout(() => { if (sideQueued) { sideQueued = false; drawSide(); } }, 200);
  }

  function drawSide() {
    const plain = document.createDocumentFragment();
    const dms = document.createDocumentFragment();
    let total = 0;
    for (const r of ordered()) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "room";
      b.dataset.room = r.name;
      if (r.name === current) b.setAttribute("aria-current", "page");
      const counted = r.notify === "none" ? 0 : r.notify === "mentions" && !r.with ? r.mentions : r.unread;
      total += counted;
      b.append(span("label", label(r)));
      let aria = label(r);
      if (r.unread > 0) {
        const u = span("badge unread", r.unread + (r.approx ? "+" : ""));
        if (r.notify === "none") u.classList.add("muted");
        b.append(u);
        aria += ", " + r.unread + (r.approx ? " or more" : "") + " unread";
        b.classList.add("has-unread");
      }
      if (r.mentions > 0) {
        b.append(span("badge mentions", "@" + r.mentions));
        aria += ", " + r.mentions + (r.mentions === 1 ? " mention" : " mentions");
      }
      if (r.notify !== "all") aria += ", notifications: " + r.notify;
      b.setAttribute("aria-label", aria);
      b.addEventListener("click", () => { switchTo(r.name); closeDrawer(); });
      li.appendChild(b);
      (r.with ? dms : plain).appendChild(li);
    }
    el.roomList.replaceChildren(plain);
    el.dmList.replaceChildren(dms);
    const title = (total > 0 ? "(" + total + ") " : "") + "machat";
    if (document.title !== title) document.title = title;
  }

  // Counts what in `r` is after its read position, from the messages the page has.
  function recount(r) {
    let unread = 0;
    let ment = 0;
    let oldest = 0;
    for (const ev of r.entries) {
      if (!isMessage(ev)) continue;
      if (!oldest) oldest = ev.id;
      if (ev.id <= r.read || ev.name === me.name) continue;
      unread++;
      if (mentions(ev.text, me.name)) ment++;
    }
    // The page holds only the last messages: the server's last id says how far unread goes.
    r.approx = false;
    if (!r.atStart && oldest && oldest > r.read + 1) {
      const far = Math.max(r.markLast, r.last) - r.read;
      if (far > unread) {
        unread = far;
        r.approx = true;
      }
    }
    if (r.state !== "joined" && !oldest) {
      const far = r.markLast - r.read;
      if (far > 0) { unread = far; r.approx = true; }
    }
    r.unread = unread;
    r.mentions = ment;
    drawSideSoon();
  }

  // The page is being looked at: what arrives in the room shown is read at once.
  function looking() {
    return !document.hidden && el.chat.hidden === false;
  }

  let readTimer = null;
  // Marks the room shown as read up to its last message (if the reader is at the bottom).
  function readCurrent(force) {
    const r = rooms.get(current);
    if (!r || r.state !== "joined") return;
    if (!force && (!looking() || !nearBottom())) return;
    const top = r.last;
    if (top <= r.read && r.unread === 0) return;
    r.read = Math.max(r.read, top);
    r.unread = 0;
    r.mentions = 0;
    r.approx = false;
    drawSideSoon();
    saveGuest();
    if (me.person && readTimer === null) readTimer = setTimeout(sendReads, 400);
  }

  // Tells the server how far the person has read (at most every 400 ms, and on leaving).
  function sendReads() {
    clearTimeout(readTimer);
    readTimer = null;
    for (const x of rooms.values()) {
      if (x.state === "joined" && x.read > (x.readSent || 0)) {
        x.readSent = x.read;
        request({ type: "read", room: x.name, id: x.read });
      }
    }
  }

  // ---------- notifications ----------

  function notifyCapable() {
    return typeof window.Notification === "function";
  }

  function showNotifyButton() {
    el.notifyEnable.hidden = !(notifyCapable() && Notification.permission === "default");
  }

  el.notifyEnable.addEventListener("click", () => {
    if (!notifyCapable()) return;
    const asked = Notification.requestPermission();
    if (asked && asked.then) asked.then(showNotifyButton, showNotifyButton);
  });

  // A message that should reach the person while they look elsewhere: at "all" any message, at
  // "mentions" one that names them or a direct message, at "nothing" none.
  function notifyOf(r, ev, mentioned) {
    const wants = r.notify === "all" || (r.notify === "mentions" && (mentioned || r.with));
    if (!wants) return;
    if (!document.hidden && document.hasFocus()) return; // the page is in front: the sidebar shows it
    if (!notifyCapable() || Notification.permission !== "granted") return;
    try {
      const n = new Notification(ev.name + (r.with ? "" : " in #" + r.name), {
        body: ev.text.slice(0, 200), tag: "machat:" + r.name,
      });
      n.onclick = () => { window.focus(); switchTo(r.name); };
    } catch (e) { /* not allowed here */ }
  }

  // ---------- the connection ----------

  function wsUrl() {
    const u = new URL("ws", location.href);
    u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    u.search = "";
    u.hash = "";
    return u.href;
  }

  function request(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN || !welcomed) return null;
    const req = ++reqSeq;
    obj.req = req;
    ws.send(JSON.stringify(obj));
    return req;
  }

  function connect() {
    clearTimeout(timer);
    timer = null;
    if (!wanted) return;
    setStatus("connecting", "connecting...");
    welcomed = false;
    pending.clear();
    for (const r of rooms.values()) {
      if (r.state !== "gone") r.state = "new";
      r.replay = null;
      r.loadingOlder = false;
    }
    const sock = new WebSocket(wsUrl());
    ws = sock;
    sock.onopen = () => {
      const hs = { name: me.name, version: 2 };
      const login = currentLogin();
      if (login && login.name === me.name) hs.token = login.token;
      sock.send(JSON.stringify(hs));
    };
    sock.onmessage = (m) => {
      if (sock !== ws || typeof m.data !== "string") return;
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev && typeof ev.type === "string") handle(ev);
    };
    sock.onclose = (c) => {
      if (sock !== ws) return;
      ws = null;
      const was = welcomed;
      welcomed = false;
      if (c.code === 1009) {
        // Our message was over the server's limit: say so and give its text back.
        local("error: line too long", "notice");
        if (el.input.value === "") { el.input.value = lastSent; grow(); }
      }
      if (!wanted) {
        setStatus("offline", "not connected");
        return;
      }
      if (was) backoff = BACKOFF_MIN;
      const delay = backoff + Math.floor(Math.random() * backoff * 0.2);
      backoff = Math.min(backoff * 2, BACKOFF_MAX);
      setStatus("reconnecting", "reconnecting in " + (delay / 1000).toFixed(1) + " s" +
        (c.code && c.code !== 1006 ? " (" + c.code + ")" : ""));
      timer = setTimeout(connect, delay);
    };
  }

  // Joins `name` (as a room of the sidebar); `switching` shows it once joined.
  function join(name, opts) {
    let r = rooms.get(name);
    if (!r || r.state === "gone") {
      r = newRoom(name);
      r.fresh = true;
      rooms.set(name, r);
    }
    if (opts && opts.key) r.key = opts.key;
    if (r.state !== "new" || !welcomed) return r;
    const ask = { type: "join", room: name };
    if (r.key) ask.key = r.key;
    if (r.last > 0) {
      ask.since = r.last; // back after a lost connection: what was missed
    } else if (r.markLast > r.read && r.read > 0 && r.markLast - r.read <= RESUME_MAX) {
      ask.since = Math.max(0, r.read - 10); // every unread message, and a little before
    } else {
      ask.history = HISTORY;
    }
    r.state = "joining";
    const req = request(ask);
    if (req !== null) pending.set(req, { kind: "join", room: name });
    drawSideSoon();
    return r;
  }

  function leave(name) {
    const r = rooms.get(name);
    if (!r) return;
    if (r.state === "joined" || r.state === "joining") request({ type: "leave", room: name });
    r.state = "gone";
    rooms.delete(name);
    if (current === name) {
      const next = ordered()[0];
      if (next) switchTo(next.name);
      else {
        current = null;
        stop(null);
        return;
      }
    }
    saveGuest();
    drawSideSoon();
  }

  function switchTo(name) {
    const r = rooms.get(name);
    if (!r) return;
    if (current !== name) {
      readCurrent(false);
      current = name;
      r.newFrom = r.unread > 0 ? r.read : -1;
    }
    showHeader();
    drawMembers();
    redraw(false);
    drawSideSoon();
    saveTab();
    save(localStorage, LAST_KEY, { name: me.name, room: r.with ? "" : name });
    setTimeout(() => readCurrent(false), 0);
    if (window.matchMedia("(min-width: 641px)").matches) el.input.focus();
  }

  function welcome(ev) {
    welcomed = true;
    takenRetries = 0;
    backoff = BACKOFF_MIN;
    me.name = ev.name;
    setStatus("connected", "connected");
    if (me.person) return; // the marks come next, then the joins
    // A guest: the rooms this browser kept, and the one asked for.
    const kept = load(localStorage, GUEST_KEY);
    if (kept && kept.name === me.name && kept.rooms && typeof kept.rooms === "object") {
      for (const [name, k] of Object.entries(kept.rooms)) {
        const r = rooms.get(name) || newRoom(name);
        if (!rooms.has(name)) rooms.set(name, r);
        r.auto = true;
        if (typeof k.read === "number") r.read = Math.max(r.read, k.read);
        if (k.notify === "all" || k.notify === "mentions" || k.notify === "none") r.notify = k.notify;
      }
    }
    joinAll();
  }

  function joinAll() {
    if (firstRoom && !rooms.has(firstRoom)) {
      const r = newRoom(firstRoom);
      r.fresh = true;
      rooms.set(firstRoom, r);
    }
    for (const r of rooms.values()) join(r.name);
    if (!current || !rooms.has(current)) {
      const want = firstRoom && rooms.has(firstRoom) ? firstRoom : (ordered()[0] || {}).name;
      if (want) switchTo(want);
    } else {
      switchTo(current);
    }
    if (rooms.size === 0) {
      // Nothing to be in yet: the lobby.
      firstRoom = "lobby";
      join("lobby");
      switchTo("lobby");
    }
  }

  function applyMark(m, joinIt) {
    if (!m || typeof m.room !== "string") return;
    let r = rooms.get(m.room);
    if (!r) {
      if (!joinIt) return;
      r = newRoom(m.room);
      r.auto = true;
      rooms.set(m.room, r);
    }
    if (typeof m.read === "number" && m.read > r.read) r.read = m.read;
    if (typeof m.last === "number") r.markLast = Math.max(r.markLast, m.last);
    if (m.notify === "all" || m.notify === "mentions" || m.notify === "none") r.notify = m.notify;
    if (typeof m.with === "string") r.with = m.with;
    if (typeof m.read === "number") r.readSent = Math.max(r.readSent || 0, m.read);
    recount(r);
    if (r.name === current) showHeader(); // the "new messages" line stays while it is shown
  }

  function handle(ev) {
    if (!welcomed) {
      if (ev.type === "welcome") return welcome(ev);
      if (ev.type === "error") {
        if (ev.reason === "authentication failed" && currentLogin()) {
          forgetLogin(); // our token was revoked or has expired: log in again
          stop("your login has ended: log in again");
          return;
        }
        stop(ev.reason);
      }
      return;
    }
    const asked = ev.req !== undefined ? pending.get(ev.req) : undefined;
    if (asked && (ev.type === "ok" || ev.type === "error")) pending.delete(ev.req);
    switch (ev.type) {
      case "marks":
        for (const m of Array.isArray(ev.marks) ? ev.marks : []) applyMark(m, true);
        if (asked === undefined) joinAll();
        return;
      case "mark":
        applyMark(ev, true);
        if (rooms.has(ev.room) && rooms.get(ev.room).state === "new") join(ev.room);
        return;
      case "unmark": {
        const r = rooms.get(ev.room);
        if (r) leave(ev.room);
        return;
      }
      case "ok":
        if (asked && asked.kind === "join") joined(asked.room);
        if (asked && asked.kind === "dm" && typeof ev.room === "string") {
          const r = join(ev.room);
          if (asked.with) r.with = r.with || asked.with;
          switchTo(ev.room);
        }
        return;
      case "error":
        return error(ev, asked);
      case "history": {
        const r = rooms.get(ev.room);
        if (r) r.replay = { older: r.loadingOlder, list: [] };
        return;
      }
      case "end_of_history": {
        const r = rooms.get(ev.room);
        if (r && r.replay) endReplay(r);
        return;
      }
      case "message":
      case "action": {
        const r = rooms.get(ev.room);
        if (!r) return;
        if (r.replay) { r.replay.list.push(ev); return; }
        message(r, ev);
        return;
      }
      case "join": {
        const r = rooms.get(ev.room);
        if (!r) return;
        r.members.add(ev.name);
        if (ev.name === me.name && r.state !== "joined") {
          r.state = "joined";
          request({ type: "who", room: r.name });
          askPowers(r);
        }
        if (r.name === current) drawMembers();
        show(r, ev);
        return;
      }
      case "leave": {
        const r = rooms.get(ev.room);
        if (!r) return;
        r.members.delete(ev.name);
        if (r.name === current) drawMembers();
        show(r, ev);
        return;
      }
      case "nick": {
        const r = rooms.get(ev.room);
        if (ev.name === me.name) me.name = ev.new;
        if (!r) return;
        r.members.delete(ev.name);
        r.members.add(ev.new);
        if (r.name === current) { drawMembers(); showHeader(); }
        show(r, ev);
        return;
      }
      case "who": {
        const r = rooms.get(ev.room);
        if (!r) return;
        r.members = new Set(ev.members);
        if (r.name === current) drawMembers();
        if (asked) pending.delete(ev.req);
        if (asked && asked.kind === "who") show(r, ev); // the user's own /who
        return;
      }
      case "help": {
        const r = asked && asked.kind === "help" ? rooms.get(asked.room) : null;
        if (asked) pending.delete(ev.req);
        if (asked && asked.kind === "help") {
          if (r) {
            const op = ev.commands.some((c) => c.startsWith("/kick"));
            if (op !== r.op) {
              r.op = op;
              if (r.name === current) { drawMembers(); redraw(true); }
            }
          }
          return;
        }
        local("commands: " + ev.commands.join(", "));
        return;
      }
      case "rooms":
        if (asked) pending.delete(ev.req);
        return showBrowser(ev);
      case "topic": {
        const r = rooms.get(ev.room);
        if (!r) return;
        r.topic = ev.text || "";
        if (r.name === current) showHeader();
        if (ev.actor) show(r, ev); // a change (on joining, the topic alone has no actor)
        return;
      }
      case "private": {
        const r = rooms.get(ev.room) || rooms.get(current);
        if (r) show(r, ev);
        return;
      }
      case "notice": {
        if (asked) pending.delete(ev.req);
        const r = rooms.get(ev.room) || (asked && rooms.get(asked.room)) || rooms.get(current);
        if (r) show(r, ev);
        if (ev.text === "bye" && asked && asked.kind === "quit") stop(null);
        return;
      }
      default:
        if (ACTS.has(ev.type)) return act(ev);
        if (rooms.get(current)) show(rooms.get(current), ev);
    }
  }

  // A message in a room we are in, live (not from a replay).
  function message(r, ev) {
    if (r.ids.has(ev.id)) return;
    r.ids.add(ev.id);
    if (ev.id > r.last) r.last = ev.id;
    show(r, ev);
    if (ev.name === me.name) {
      // What we say we have read: everything up to it.
      if (ev.id > r.read) { r.read = ev.id; r.unread = 0; r.mentions = 0; r.approx = false; saveGuest(); }
      drawSideSoon();
      return;
    }
    if (ev.id <= r.read) return;
    const mentioned = mentions(ev.text, me.name);
    if (r.name === current && looking() && atBottom) {
      readCurrent(true);
      return;
    }
    r.unread++;
    if (mentioned) r.mentions++;
    drawSideSoon();
    notifyOf(r, ev, mentioned);
  }

  // A replay has ended: its messages join the room's log in id order, each once.
  function endReplay(r) {
    const { older, list } = r.replay;
    r.replay = null;
    const fresh = list.filter((m) => !r.ids.has(m.id));
    for (const m of fresh) {
      r.ids.add(m.id);
      if (m.id > r.last) r.last = m.id;
    }
    if (older) {
      r.loadingOlder = false;
      if (fresh.length === 0) {
        r.atStart = true;
        if (!r.entries.length || r.entries[0].type !== "start") {
          r.entries.unshift({ type: "start", room: r.name, localTs: (r.entries[0] || {}).ts });
        }
      } else {
        r.entries = fresh.concat(r.entries);
      }
    } else {
      if (r.fresh) {
        // A room new to this person: its past is not "unread".
        r.fresh = false;
        for (const m of list) if (m.id > r.read) r.read = m.id;
        saveGuest();
      }
      // Before what the log holds (a first join) or after it (back after a lost connection).
      const lastShown = r.entries.reduce((x, e) => (isMessage(e) ? Math.max(x, e.id) : x), 0);
      const before = fresh.filter((m) => m.id < lastShown);
      const after = fresh.filter((m) => m.id >= lastShown);
      r.entries = before.concat(r.entries, after);
      if (r.entries.length > KEEP) r.entries.splice(0, r.entries.length - KEEP);
      if (list.length < HISTORY && !r.entries.some((e) => e.type === "start") &&
          list.length === fresh.length && r.entries.filter(isMessage).length === list.length) {
        // The whole history fit: this is where the room begins.
        r.atStart = list.length === 0 || (list[0].id === 1);
      }
    }
    recount(r);
    if (r.name === current) {
      if (!older && r.unread > 0 && r.newFrom < 0) r.newFrom = r.read;
      redraw(older);
      setTimeout(() => readCurrent(false), 0);
    }
  }

  function joined(name) {
    const r = rooms.get(name);
    if (!r) return;
    if (r.state !== "joined") {
      r.state = "joined";
      request({ type: "who", room: r.name });
      askPowers(r);
    }
    r.auto = true; // joining it again by itself (after a lost connection) may race our old one
    recount(r);
    saveGuest();
  }

  // Asks the server what we may do in `r` (quietly: the answer is not shown).
  function askPowers(r) {
    const req = request({ type: "command", room: r.name, text: "/help" });
    if (req !== null) pending.set(req, { kind: "help", room: r.name });
  }

  function error(ev, asked) {
    if (asked && /^history (is off|unavailable)/.test(ev.reason)) {
      // Only the replay is refused: a join goes on (its ok still comes), older pages end here.
      if (asked.kind === "join") pending.set(ev.req, asked);
      const r = rooms.get(asked.room);
      if (r && asked.kind === "older") { r.loadingOlder = false; r.atStart = true; }
      return;
    }
    if (asked && asked.kind === "join") {
      const r = rooms.get(asked.room);
      // A rejoin that races our own old connection's leave: try again shortly.
      if (/already taken/.test(ev.reason) && r && r.auto && takenRetries < TAKEN_RETRIES) {
        takenRetries++;
        r.state = "new";
        setTimeout(() => join(asked.room), 500);
        return;
      }
      if (r) { r.state = "gone"; rooms.delete(asked.room); }
      saveGuest();
      drawSideSoon();
      if (rooms.size === 0) {
        stop(ev.reason);
        return;
      }
      if (current === asked.room) switchTo(ordered()[0].name);
      local("error: " + ev.reason);
      return;
    }
    if (asked && (asked.kind === "help" || asked.kind === "read")) return;
    if (asked && asked.kind === "older") {
      const r = rooms.get(asked.room);
      if (r) { r.loadingOlder = false; r.replay = null; }
    }
    if (ev.reason === "line too long" && el.input.value === "") {
      el.input.value = lastSent;
      grow();
    }
    const r = (asked && rooms.get(asked.room)) || rooms.get(current);
    if (r) show(r, { type: "error", reason: ev.reason, room: r.name });
  }

  // A moderation event: a deleted message disappears, the topic goes to the header, and a
  // kick or ban of ourselves takes the room away with why.
  function act(ev) {
    const r = rooms.get(ev.room);
    if (!r) return;
    if (ev.type === "delete") {
      const key = ev.room + "\n" + ev.id;
      for (const e of el.log.querySelectorAll(".entry[data-msg]")) {
        if (e.dataset.msg === key) e.remove();
      }
      r.entries = r.entries.filter((x) => !(isMessage(x) && x.id === ev.id));
      recount(r);
    }
    if (ev.type === "topic") {
      r.topic = ev.text || "";
      if (r.name === current) showHeader();
    }
    if ((ev.type === "op" || ev.type === "deop") && ev.target === me.name) askPowers(r);
    show(r, ev);
    if ((ev.type === "kick" || ev.type === "ban") && ev.target === me.name) {
      r.state = "gone";
      rooms.delete(r.name);
      saveGuest();
      drawSideSoon();
      if (rooms.size === 0) {
        stop(actText(ev));
        return;
      }
      if (current === r.name) switchTo(ordered()[0].name);
      local(actText(ev) + " (in #" + r.name + ")");
    }
  }

  // Stops for good: after a refused handshake, /quit, leaving the last room or logging out.
  function stop(reason) {
    wanted = false;
    clearTimeout(timer);
    timer = null;
    if (ws) {
      const s = ws;
      ws = null;
      try { s.close(); } catch (e) { /* already closed */ }
    }
    welcomed = false;
    setStatus("offline", "not connected");
    forget(sessionStorage, TAB_KEY);
    if (me) {
      el.name.value = me.name;
      el.room.value = current && rooms.get(current) && !rooms.get(current).with ? current : (firstRoom || "");
    }
    el.loginError.textContent = reason || "";
    showLogin(true);
  }

  // ---------- older messages ----------

  function loadOlder() {
    const r = rooms.get(current);
    if (!r || r.state !== "joined" || r.atStart || r.loadingOlder || r.replay) return;
    const first = r.entries.find(isMessage);
    if (!first) { r.atStart = true; return; }
    const req = request({ type: "history", room: r.name, limit: OLDER, before: first.id });
    if (req === null) return;
    r.loadingOlder = true;
    pending.set(req, { kind: "older", room: r.name });
  }

  el.log.addEventListener("scroll", () => {
    atBottom = nearBottom();
    if (el.log.scrollTop < 80) loadOlder();
    if (atBottom) readCurrent(false);
  }, { passive: true });

  // ---------- the room browser, joining, conversations ----------

  el.browse.addEventListener("click", () => {
    const open = el.roomBrowser.hidden;
    el.roomBrowser.hidden = !open;
    el.browse.setAttribute("aria-expanded", String(open));
    if (open) {
      const req = request({ type: "rooms" });
      if (req !== null) pending.set(req, { kind: "rooms" });
    }
  });

  function showBrowser(ev) {
    const frag = document.createDocumentFragment();
    for (const x of ev.rooms || []) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "room";
      b.append(span("label", "#" + x.room), span("count", String(x.members)));
      b.setAttribute("aria-label", "Join " + x.room + ", " + x.members + " in it");
      b.addEventListener("click", () => { join(x.room); switchTo(x.room); closeDrawer(); });
      li.appendChild(b);
      frag.appendChild(li);
    }
    if (ev.more) frag.appendChild(span("hint", "and " + ev.more + " more"));
    if (!ev.rooms || ev.rooms.length === 0) frag.appendChild(span("hint", "no rooms yet"));
    el.allRooms.replaceChildren(frag);
    el.roomBrowser.hidden = false;
  }

  el.newRoom.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = el.newRoomName.value.trim();
    if (!name) return;
    el.newRoomName.value = "";
    join(name);
    switchTo(name);
    closeDrawer();
  });

  function openDm(name) {
    const req = request({ type: "dm", to: name });
    if (req !== null) pending.set(req, { kind: "dm", with: name, room: current });
  }

  el.dmForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const name = el.dmName.value.trim();
    if (!name) return;
    el.dmName.value = "";
    openDm(name);
    closeDrawer();
  });

  el.notify.addEventListener("change", () => {
    const r = rooms.get(current);
    if (!r) return;
    r.notify = el.notify.value;
    if (me.person) request({ type: "notify", room: r.name, level: r.notify });
    saveGuest();
    drawSideSoon();
  });

  // ---------- the drawer (phones) and the keyboard ----------

  function closeDrawer() {
    document.body.classList.remove("show-rooms");
    el.roomsToggle.setAttribute("aria-expanded", "false");
  }
  el.roomsToggle.addEventListener("click", () => {
    const open = document.body.classList.toggle("show-rooms");
    el.roomsToggle.setAttribute("aria-expanded", String(open));
  });

  document.addEventListener("keydown", (e) => {
    if (el.chat.hidden) return;
    if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault();
      const list = ordered();
      const at = list.findIndex((r) => r.name === current);
      if (list.length === 0) return;
      const next = list[(at + (e.key === "ArrowDown" ? 1 : list.length - 1)) % list.length];
      switchTo(next.name);
      return;
    }
    if (e.key === "Escape" && !(e.target && e.target.id === "topic-input")) {
      readCurrent(true);
      const r = rooms.get(current);
      if (r) r.newFrom = -1;
      el.log.querySelectorAll(".new-line").forEach((x) => x.remove());
      closeDrawer();
    }
  });

  window.addEventListener("focus", () => readCurrent(false));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) readCurrent(false); });

  // ---------- header buttons ----------

  el.editTopic.addEventListener("click", () => {
    const r = rooms.get(current);
    if (!r) return;
    const input = document.createElement("input");
    input.id = "topic-input";
    input.value = r.topic;
    input.maxLength = 500;
    input.setAttribute("aria-label", "New topic (empty clears it)");
    el.editTopic.hidden = true;
    el.topic.replaceWith(input);
    input.focus();
    const done = (sendIt) => {
      if (sendIt) request({ type: "command", room: r.name, text: "/topic " + (input.value.trim() || "-") });
      input.replaceWith(el.topic);
      el.editTopic.hidden = !r.op;
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); done(true); }
      if (e.key === "Escape") { e.preventDefault(); done(false); }
    });
    input.addEventListener("blur", () => { if (input.isConnected) done(false); });
  });

  // Joins and leaves shown or hidden, remembered by the browser.
  function setQuiet(on) {
    el.log.classList.toggle("quiet", on);
    el.quiet.setAttribute("aria-pressed", String(on));
    el.quiet.textContent = on ? "Joins: hidden" : "Joins: shown";
    save(localStorage, QUIET_KEY, on);
  }
  el.quiet.addEventListener("click", () => setQuiet(!el.log.classList.contains("quiet")));
  el.membersToggle.addEventListener("click", () => {
    const open = el.chat.classList.toggle("show-members");
    el.membersToggle.setAttribute("aria-expanded", String(open));
  });
  setQuiet(load(localStorage, QUIET_KEY) === true);

  el.leave.addEventListener("click", () => { if (current) leave(current); });

  function showLogin(on) {
    el.login.hidden = !on;
    el.chat.hidden = on;
    for (const b of [el.leave, el.quiet, el.membersToggle, el.roomsToggle]) b.hidden = on;
    el.notifyLabel.hidden = on;
    if (on) {
      document.title = "machat";
      el.where.textContent = "";
      el.topic.textContent = "";
      el.editTopic.hidden = true;
      el.name.focus();
    } else {
      el.input.focus();
    }
  }

  // Starts chatting as `name`, in the rooms kept for it and `room`.
  function start(name, room) {
    const login = currentLogin();
    me = { name: name, person: !!(login && login.name === name) };
    rooms.clear();
    current = null;
    firstRoom = room || null;
    el.dmForm.hidden = !me.person;
    el.dmHint.hidden = me.person;
    el.loginError.textContent = "";
    el.log.replaceChildren();
    showLogin(false);
    showNotifyButton();
    wanted = true;
    backoff = BACKOFF_MIN;
    takenRetries = 0;
    saveTab();
    if (room) save(localStorage, LAST_KEY, { name: name, room: room });
    connect();
  }

  // ---------- logging in ----------

  function currentLogin() {
    const l = load(localStorage, LOGIN_KEY);
    if (!l || typeof l.token !== "string" || typeof l.name !== "string") return null;
    if (l.expires && Date.parse(l.expires) <= Date.now()) return null;
    return l;
  }

  function forgetLogin() {
    forget(localStorage, LOGIN_KEY);
    showAccount();
  }

  function showAccount() {
    const l = currentLogin();
    el.account.hidden = !l;
    el.logout.hidden = !l;
    el.accountName.textContent = l ? "Logged in as " + l.name + "." : "";
    if (l && !el.name.value) el.name.value = l.name;
  }

  // Trades a password for a token (POST /api/login); the password field is emptied at once.
  async function logIn(name, password) {
    el.password.value = "";
    let r;
    try {
      r = await fetch("api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: name, password: password }),
        cache: "no-store",
      });
    } catch (e) {
      return "cannot reach the server";
    }
    let body = {};
    try { body = await r.json(); } catch (e) { body = {}; }
    if (!r.ok || typeof body.token !== "string") return body.error || "authentication failed";
    save(localStorage, LOGIN_KEY, { name: body.name, token: body.token, expires: body.expires });
    showAccount();
    return null;
  }

  async function logOut() {
    const l = currentLogin();
    forgetLogin();
    if (wanted) stop(null);
    if (l) {
      try {
        await fetch("api/logout", { method: "POST", headers: { Authorization: "Bearer " + l.token } });
      } catch (e) { /* the token is forgotten here either way */ }
    }
  }
  el.logout.addEventListener("click", logOut);
  el.formLogout.addEventListener("click", logOut);

  el.loginForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    let name = el.name.value.trim();
    const room = el.room.value.trim();
    const password = el.password.value;
    if (!name) return;
    if (password) {
      el.loginError.textContent = "";
      const refused = await logIn(name, password);
      if (refused) {
        el.loginError.textContent = refused;
        return;
      }
      name = currentLogin().name; // the registered spelling
      el.name.value = name;
    }
    const login = currentLogin();
    if (!room && !(login && login.name === name)) {
      el.loginError.textContent = "a room to join, please";
      return;
    }
    start(name, room);
  });

  // Whether this server admits registered names only (it then says so on the form).
  fetch("api/info", { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : {}))
    .then((info) => { el.needsAccount.hidden = !(info && info.require_auth === true); })
    .catch(() => {});
  showAccount();

  // ---------- the message box ----------

  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });

  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });

  el.input.addEventListener("input", grow);
  function grow() {
    el.input.style.height = "auto";
    el.input.style.height = Math.min(el.input.scrollHeight + 2, 200) + "px";
  }

  // A line typed into the box as the request it stands for: text, or a /command.
  function requestFor(text, room) {
    const m = /^\/(\S+)\s*([\s\S]*)$/.exec(text);
    if (!m || text.startsWith("//")) {
      return { type: "say", room: room, text: text.startsWith("//") ? text.slice(1) : text };
    }
    const verb = m[1].toLowerCase();
    const args = m[2].trim();
    const first = args.split(/\s+/)[0] || "";
    const rest = args.slice(first.length).trim();
    switch (verb) {
      case "me": return args ? { type: "me", room: room, text: args } : null;
      case "msg": return first && rest ? { type: "msg", room: room, to: first, text: rest } : null;
      case "who": return { type: "who", room: room };
      case "rooms": return { type: "rooms" };
      case "nick": return first ? { type: "nick", name: first } : null;
      case "history": return { type: "history", room: room, limit: Math.min(Math.max(parseInt(first, 10) || 20, 1), 1000) };
      case "quit": return { type: "quit" };
      case "join": return first ? { local: "join", room: first, key: rest || undefined } : null;
      case "leave": case "part": return { local: "leave", room: first || room };
      case "dm": case "query": return first ? { local: "dm", to: first } : null;
      default: return { type: "command", room: room, text: text };
    }
  }

  function submit() {
    const text = el.input.value;
    if (text === "") return;
    const r = rooms.get(current);
    if (!welcomed || !r || r.state !== "joined") {
      el.input.classList.add("blocked");
      setTimeout(() => el.input.classList.remove("blocked"), 400);
      return; // keep the text: it can be sent once the connection is back
    }
    const ask = requestFor(text, r.name);
    if (ask === null) {
      local("usage: /me ACTION, /msg NAME TEXT, /nick NAME, /join ROOM, /leave, /dm NAME");
      return;
    }
    if (ask.local === "join") {
      join(ask.room, { key: ask.key });
      switchTo(ask.room);
    } else if (ask.local === "leave") {
      leave(ask.room);
    } else if (ask.local === "dm") {
      openDm(ask.to);
    } else {
      const req = request(ask);
      if (req === null) return;
      pending.set(req, { kind: ask.type, room: r.name });
      if (ask.type === "rooms") {
        el.roomBrowser.hidden = false;
        document.body.classList.add("show-rooms");
      }
    }
    lastSent = text;
    el.input.value = "";
    grow();
  }

  // Leaving the page (a reload, another page, or the back/forward cache, which would otherwise
  // keep the socket open but unread): close the socket ourselves; coming back reconnects.
  window.addEventListener("pagehide", () => {
    if (guestTimer !== null) saveGuestNow();
    if (readTimer !== null) sendReads();
    clearTimeout(timer);
    timer = null;
    if (ws) {
      const s = ws;
      ws = null;
      welcomed = false;
      s.close();
    }
  });
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && wanted && !ws) {
      backoff = BACKOFF_MIN;
      connect();
    }
  });

  // ---------- start ----------

  const params = new URLSearchParams(location.search);
  const last = load(localStorage, LAST_KEY) || {};
  el.name.value = params.get("name") || last.name || "";
  el.room.value = params.get("room") || last.room || "";
  const tab = load(sessionStorage, TAB_KEY);
  const login = currentLogin();
  if (tab && typeof tab.name === "string" && tab.name) {
    // A reload: back in every room, on the one shown before.
    start(tab.name, null);
    current = typeof tab.current === "string" ? tab.current : null;
  } else if (login && !params.get("name")) {
    start(login.name, params.get("room") || null); // logged in: straight to the chat
  } else {
    showLogin(true);
  }
})();
