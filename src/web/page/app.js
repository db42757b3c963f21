// machat web page: one WebSocket to /ws, JSON frames as in docs/PROTOCOL.md section 6.
// No framework, no build step. Every piece of text that comes from a user or the server is
// inserted with textContent / createTextNode, never as HTML.
"use strict";

(function () {
  const KEEP = 200; // entries kept in the log (and in sessionStorage)
  const HISTORY = 50; // messages replayed on entering a room
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  const TAKEN_RETRIES = 8; // an automatic rejoin may race our own old connection's leave
  const SESSION_KEY = "machat.session";
  const LAST_KEY = "machat.last";

  const $ = (id) => document.getElementById(id);
  const el = {
    login: $("login"), loginForm: $("login-form"), name: $("name"), room: $("room"),
    loginError: $("login-error"), chat: $("chat"), log: $("log"), members: $("members"),
    memberCount: $("member-count"), composer: $("composer"), input: $("input"),
    status: $("status"), where: $("where"), leave: $("leave"), topic: $("topic"),
    quiet: $("quiet"), membersToggle: $("members-toggle"), editTopic: $("edit-topic"), password: $("password"), account: $("account"),
    accountName: $("account-name"), logout: $("logout"), needsAccount: $("needs-account"),
  };
  // A registered name's login: the token the server gave for its password, never the password
  // itself ({name, token, expires}), kept by the browser until it expires or we log out.
  const LOGIN_KEY = "machat.login";
  const QUIET_KEY = "machat.quiet";

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

  // What survives a reload of this tab: who we are, where, the last message id seen per room,
  // and the displayed entries (raw server events), each tagged with the room it was shown in
  // (`in`): every room keeps its own log, and the page shows the current room's.
  let session = null; // {name, room, lastIds: {room: id}, entries: [event]}
  let ws = null;
  let joined = false; // our own join event arrived on the current socket
  let wanted = false; // we want to be connected (false after Leave, /quit or a refusal)
  let backoff = BACKOFF_MIN;
  let timer = null;
  let takenRetries = 0;
  // While a history replay runs: "join" (asked in the handshake), "enter" (asked after our own
  // /join to another room) or "command" (the user's /history, shown apart and not de-duplicated).
  let inReplay = null;
  let enterHistory = 0; // /history requests we sent ourselves after a /join
  let resuming = false; // the handshake asked for "since"
  let lastSent = ""; // given back to the message box if the server refuses it as too long
  let quietWho = 0; // /who replies we asked for ourselves (to fill the member list)
  let quietHelp = 0; // /help replies we asked for ourselves (to learn what we may do here)
  // What our rank in this room lets us do, as /help tells (an operator may kick).
  let powers = { op: false };
  // The new messages of a replay we asked for ourselves (on joining, after a /join), shown at
  // its end under a header that counts them: none new, no header.
  let replayed = [];
  let replayHeader = null;
  const seen = new Set(); // room + "\n" + id of every message shown
  const members = new Set();

  // ---------- storage ----------

  function load(store, key) {
    try { return JSON.parse(store.getItem(key)); } catch (e) { return null; }
  }
  function save(store, key, value) {
    try { store.setItem(key, JSON.stringify(value)); } catch (e) { /* full or disabled */ }
  }
  let saveTimer = null;
  function saveSoon() {
    if (saveTimer === null) saveTimer = setTimeout(saveNow, 100);
  }
  function saveNow() {
    clearTimeout(saveTimer);
    saveTimer = null;
    if (session) save(sessionStorage, SESSION_KEY, session);
  }
  // Leaving the page (a reload, another page, or the back/forward cache, which would otherwise
  // keep the socket open but unread): close the socket ourselves; come back resumes.
  window.addEventListener("pagehide", () => {
    saveNow();
    clearTimeout(timer);
    timer = null;
    if (ws) {
      const s = ws;
      ws = null;
      joined = false;
      s.close();
    }
  });
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && wanted && !ws) {
      backoff = BACKOFF_MIN;
      connect();
    }
  });

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
      let url = m[0].replace(/[.,;:!?)\]]+$/, "");
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

  // Whether a message is addressed to `me`: `@Me` anywhere, or a line starting `Me:`/`Me,`.
  function mentions(text, me) {
    if (!me) return false;
    const esc = me.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    return new RegExp("(^|[^\\w@])@" + esc + "(?![\\w])", "iu").test(text) ||
      new RegExp("^" + esc + "[:,]", "imu").test(text);
  }

  function day(ts) {
    const d = ts ? new Date(ts) : new Date();
    return isNaN(d) ? "" : d.toDateString();
  }

  function dayLabel(ts) {
    const d = new Date(ts);
    return d.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
  }

  let lastDay = ""; // the day of the last entry drawn, for the separators

  // A separator before the first entry of each day.
  function separate(ev) {
    const ts = ev.ts || ev.localTs;
    const d = day(ts);
    if (!d || d === lastDay) return;
    lastDay = d;
    const sep = document.createElement("div");
    sep.className = "day";
    sep.setAttribute("role", "separator");
    sep.textContent = dayLabel(ts);
    el.log.appendChild(sep);
  }

  function nameSpan(name) {
    const s = span("name", name);
    s.style.setProperty("--hue", String(hue(name)));
    return s;
  }

  // One event -> one .entry element (or null for events that are not shown).
  function render(ev) {
    const e = document.createElement("div");
    e.className = "entry " + ev.type;
    const time = document.createElement("time");
    if (ev.ts) {
      time.dateTime = ev.ts;
      time.title = new Date(ev.ts).toLocaleString();
    }
    time.textContent = hhmm(ev.ts || ev.localTs);
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
        body.append(nameSpan(ev.name), " joined " + ev.room);
        break;
      case "leave":
        body.append(nameSpan(ev.name), " left");
        break;
      case "nick":
        body.append(nameSpan(ev.name), " is now ", nameSpan(ev.new));
        break;
      case "private":
        if (ev.from === session.name && ev.to !== session.name) {
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
      case "rooms":
        body.append(span("text", "rooms: " +
          ev.rooms.map((r) => r.room + " (" + r.members + ")").join(", ") +
          (ev.more ? " and " + ev.more + " more" : "")));
        break;
      case "help":
        body.append(span("text", "commands: " + ev.commands.join(", ")));
        break;
      case "history":
        body.append(span("text", (ev.replay ? "history of " + ev.room + ": "
          : ev.resumed ? "missed while away: " : "recent messages in " + ev.room + ": ") +
          ev.count + (ev.count === 1 ? " message" : " messages")));
        break;
      case "end_of_history":
        body.append(span("text", "end of history"));
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
    if ((ev.type === "message" || ev.type === "action") && typeof ev.id === "number") {
      e.dataset.msg = ev.room + "\n" + ev.id; // found again when it is deleted
      if (ev.name === session.name || powers.op) {
        e.appendChild(tool("delete", "Delete this message", "/delete " + ev.id));
      }
    }
    if (ev.replay) e.classList.add("replay");
    if ((ev.type === "message" || ev.type === "action") && !ev.replay) {
      e.dataset.id = String(ev.id);
      e.dataset.room = ev.room;
    }
    if (ev.name === session.name && (ev.type === "message" || ev.type === "action")) {
      e.classList.add("mine");
    } else if ((ev.type === "message" || ev.type === "action") && mentions(ev.text, session.name)) {
      e.classList.add("mention");
    }
    return e;
  }

  function nearBottom() {
    return el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 60;
  }

  // Others' joins and leaves in a row are one line ("3 joined, 1 left", the names on hover and
  // on a click), so a busy room's comings and goings do not push the conversation away.
  function presence(ev) {
    return (ev.type === "join" || ev.type === "leave") && ev.name !== session.name;
  }

  function place(ev) {
    const prev = el.log.lastElementChild;
    if (presence(ev) && prev && prev.classList.contains("presence")) {
      const group = JSON.parse(prev.dataset.group || "[]");
      group.push([ev.type, ev.name]);
      prev.dataset.group = JSON.stringify(group);
      const joined = group.filter((g) => g[0] === "join").map((g) => g[1]);
      const left = group.filter((g) => g[0] === "leave").map((g) => g[1]);
      const parts = [];
      if (joined.length) parts.push(joined.length + " joined");
      if (left.length) parts.push(left.length + " left");
      const detail = (joined.length ? "joined: " + joined.join(", ") : "") +
        (joined.length && left.length ? "; " : "") + (left.length ? "left: " + left.join(", ") : "");
      const body = prev.querySelector(".body");
      body.replaceChildren(span("text", parts.join(", ")), span("detail", " (" + detail + ")"));
      prev.title = detail;
      return;
    }
    const e = render(ev);
    if (presence(ev)) {
      e.classList.add("presence");
      e.dataset.group = JSON.stringify([[ev.type, ev.name]]);
      e.addEventListener("click", () => e.classList.toggle("open"));
    }
    el.log.appendChild(e);
  }

  // Shows an event in the current room's log and keeps it for a reload.
  function show(ev, persist) {
    if (!ev.ts && !ev.localTs) ev.localTs = new Date().toISOString();
    if (!ev.in) ev.in = session.room;
    const stick = nearBottom();
    separate(ev);
    place(ev);
    while (el.log.childElementCount > KEEP) el.log.firstElementChild.remove();
    if (persist !== false) {
      session.entries.push(ev);
      // At most KEEP entries per room: drop this room's oldest.
      let mine = 0;
      for (const x of session.entries) if (x.in === ev.in) mine++;
      for (let i = 0; mine > KEEP && i < session.entries.length; ) {
        if (session.entries[i].in === ev.in) {
          session.entries.splice(i, 1);
          mine--;
        } else {
          i++;
        }
      }
      saveSoon();
    }
    if (stick) el.log.scrollTop = el.log.scrollHeight;
  }

  // Draws the current room's log from what the tab kept of it (on start, and when /join
  // moves the page to another room).
  function redraw() {
    el.log.replaceChildren();
    seen.clear();
    lastDay = "";
    for (const ev of session.entries) {
      if ((ev.in || session.room) !== session.room) continue;
      separate(ev);
      if ((ev.type === "message" || ev.type === "action") && !ev.replay) {
        seen.add(ev.room + "\n" + ev.id);
      }
      place(ev);
    }
    el.log.scrollTop = el.log.scrollHeight;
  }

  function local(text, cls) {
    show({ type: cls || "notice", text: text, localTs: new Date().toISOString() });
  }

  // An operator's tool: a button whose label comes from the style sheet (so a member's entry
  // reads as its name alone), named for screen readers.
  function tool(act, label, command) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "tool";
    b.dataset.act = act;
    b.title = label;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      send(command);
    });
    return b;
  }

  function drawMembers() {
    el.members.replaceChildren();
    const names = Array.from(members).sort();
    for (const n of names) {
      const li = document.createElement("li");
      li.appendChild(nameSpan(n));
      if (n === session.name) li.classList.add("me");
      else if (powers.op) {
        li.append(tool("kick", "Kick " + n, "/kick " + n),
          tool("mute", "Mute " + n + " for 10 minutes", "/mute " + n + " 10m"),
          tool("ban", "Ban " + n, "/ban " + n));
      }
      el.members.appendChild(li);
    }
    el.memberCount.textContent = "(" + names.length + ")";
    el.membersToggle.textContent = "Members (" + names.length + ")";
    el.editTopic.hidden = !powers.op;
  }

  // Asks the server what we may do in this room (quietly: the answer is not shown).
  function askPowers() {
    if (send("/help")) quietHelp++;
  }

  el.editTopic.addEventListener("click", () => {
    const input = document.createElement("input");
    input.id = "topic-input";
    input.value = el.topic.textContent;
    input.maxLength = 500;
    input.setAttribute("aria-label", "New topic (empty clears it)");
    el.editTopic.hidden = true;
    el.topic.replaceWith(input);
    input.focus();
    const done = (sendIt) => {
      if (sendIt) send("/topic " + (input.value.trim() || "-"));
      input.replaceWith(el.topic);
      el.editTopic.hidden = !powers.op;
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); done(true); }
      if (e.key === "Escape") { e.preventDefault(); done(false); }
    });
    input.addEventListener("blur", () => { if (input.isConnected) done(false); });
  });

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
  }

  function showWhere() {
    el.where.textContent = session ? session.name + " in " + session.room : "";
    document.title = session ? session.room + " - machat" : "machat";
  }

  // ---------- the connection ----------

  function wsUrl() {
    const u = new URL("ws", location.href);
    u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    u.search = "";
    u.hash = "";
    return u.href;
  }

  function connect() {
    clearTimeout(timer);
    timer = null;
    if (!wanted) return;
    setStatus("connecting", "connecting...");
    joined = false;
    inReplay = null;
    quietWho = 0;
    quietHelp = 0;
    enterHistory = 0;
    resuming = false;
    const sock = new WebSocket(wsUrl());
    ws = sock;
    sock.onopen = () => {
      const hs = { name: session.name, room: session.room };
      const login = currentLogin();
      if (login && login.name === session.name) hs.token = login.token;
      const last = session.lastIds[session.room];
      // A resume asks for everything after the last id seen; a first visit for recent history.
      resuming = typeof last === "number";
      if (resuming) hs.since = last;
      else hs.history = HISTORY;
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
      const wasJoined = joined;
      joined = false;
      if (!wanted) {
        setStatus("offline", "not connected");
        return;
      }
      if (wasJoined) backoff = BACKOFF_MIN;
      const delay = backoff + Math.floor(Math.random() * backoff * 0.2);
      backoff = Math.min(backoff * 2, BACKOFF_MAX);
      setStatus("reconnecting", "reconnecting in " + (delay / 1000).toFixed(1) + " s" +
        (c.code && c.code !== 1006 ? " (" + c.code + ")" : ""));
      timer = setTimeout(connect, delay);
    };
  }

  function handle(ev) {
    if (ev.type === "error" && /^history is off/.test(ev.reason) && (!joined || enterHistory > 0)) {
      if (joined) enterHistory--;
      return; // we asked for history on our own; without it the chat works all the same
    }
    if (ev.type === "error" && !joined && ev.reason === "authentication failed" && currentLogin()) {
      // Our token was revoked or has expired: log in again.
      forgetLogin();
      stop("your login has ended: log in again");
      return;
    }
    if (ev.type === "error" && !joined) {
      // A refused handshake: the server closes right after. A taken name on an automatic
      // rejoin is most likely our own previous connection that the server has not dropped yet.
      if (/already taken/.test(ev.reason) && session.auto && takenRetries < TAKEN_RETRIES) {
        takenRetries++;
        return;
      }
      if (!/^history/.test(ev.reason)) {
        stop(ev.reason);
        return;
      }
    }
    switch (ev.type) {
      case "history":
        if (!joined) inReplay = "join";
        else if (enterHistory > 0) { enterHistory--; inReplay = "enter"; }
        else inReplay = "command";
        if (inReplay === "command") show(Object.assign({ replay: true }, ev));
        else {
          replayed = [];
          replayHeader = Object.assign({ resumed: inReplay === "join" && resuming }, ev);
        }
        return;
      case "end_of_history":
        if (inReplay === "command") show(ev);
        else if (replayHeader && replayed.length > 0) {
          // Only what this room's log did not show yet, counted as such.
          show(Object.assign(replayHeader, { count: replayed.length }), false);
          for (const m of replayed) show(m);
        }
        replayed = [];
        replayHeader = null;
        inReplay = null;
        return;
      case "message":
      case "action": {
        if (inReplay === "command") {
          show(Object.assign({ replay: true }, ev));
          return;
        }
        const key = ev.room + "\n" + ev.id;
        if (seen.has(key)) return;
        seen.add(key);
        const last = session.lastIds[ev.room];
        if (typeof last !== "number" || ev.id > last) session.lastIds[ev.room] = ev.id;
        if (inReplay && replayHeader) replayed.push(ev);
        else show(ev);
        return;
      }
      case "join":
        if (ev.name === session.name && !joined) {
          joined = true;
          takenRetries = 0;
          session.auto = true;
          backoff = BACKOFF_MIN;
          setStatus("connected", "connected");
        }
        if (ev.name === session.name && ev.room !== session.room) {
          session.room = ev.room; // after /join ROOM: this room's own log, then what is new
          showTopic("");
          redraw();
          members.clear();
          showWhere();
          rememberLast();
          if (send("/history " + HISTORY)) enterHistory++;
        }
        if (ev.room === session.room) {
          members.add(ev.name);
          drawMembers();
        }
        if (ev.name === session.name && send("/who")) quietWho++;
        if (ev.name === session.name) askPowers();
        show(ev);
        return;
      case "leave":
        if (ev.room === session.room) {
          members.delete(ev.name);
          drawMembers();
        }
        show(ev);
        return;
      case "nick":
        if (ev.room === session.room) {
          members.delete(ev.name);
          members.add(ev.new);
        }
        if (ev.name === session.name) {
          session.name = ev.new;
          showWhere();
          rememberLast();
        }
        drawMembers();
        show(ev);
        return;
      case "help":
        if (quietHelp > 0) {
          quietHelp--;
          const op = ev.commands.some((c) => c.startsWith("/kick"));
          if (op !== powers.op) {
            powers.op = op;
            drawMembers();
            redraw();
          }
          return;
        }
        show(ev);
        return;
      case "who":
        if (ev.room === session.room) {
          members.clear();
          for (const n of ev.members) members.add(n);
          drawMembers();
        }
        if (quietWho > 0) quietWho--;
        else show(ev);
        return;
      case "notice":
        show(ev);
        if (ev.text === "bye") stop(null);
        return;
      case "error":
        if (ev.reason === "line too long" && el.input.value === "") {
          el.input.value = lastSent;
          grow();
        }
        show(ev);
        return;
      default:
        if (ACTS.has(ev.type)) return act(ev);
        show(ev);
    }
  }

  // A moderation event: a deleted message disappears (here and from what a reload shows),
  // the topic goes to the header, and a kick or ban of ourselves ends the session with why.
  function act(ev) {
    if (ev.type === "delete") {
      const key = ev.room + "\n" + ev.id;
      for (const e of el.log.querySelectorAll(".entry[data-msg]")) {
        if (e.dataset.msg === key) e.remove();
      }
      session.entries = session.entries.filter((x) =>
        !((x.type === "message" || x.type === "action") && x.room === ev.room && x.id === ev.id));
      saveSoon();
    }
    if (ev.type === "topic" && ev.room === session.room) showTopic(ev.text);
    // A role given or taken from us changes what we may do: ask again.
    if ((ev.type === "op" || ev.type === "deop") && ev.target === session.name) askPowers();
    show(ev);
    if ((ev.type === "kick" || ev.type === "ban") && ev.target === session.name &&
        ev.room === session.room) {
      stop(actText(ev));
    }
  }

  function showTopic(text) {
    el.topic.textContent = text || "";
    el.topic.title = text ? "Topic: " + text : "";
  }

  function send(text) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(text);
      return true;
    }
    return false;
  }

  // Stops for good: after a refused handshake, /quit or Leave.
  function stop(reason) {
    wanted = false;
    clearTimeout(timer);
    timer = null;
    if (ws) {
      const s = ws;
      ws = null;
      try { s.close(); } catch (e) { /* already closed */ }
    }
    joined = false;
    setStatus("offline", "not connected");
    if (session) {
      session.active = false;
      saveNow();
    }
    el.name.value = session ? session.name : el.name.value;
    el.room.value = session ? session.room : el.room.value;
    el.loginError.textContent = reason || "";
    showLogin(true);
  }

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

  function showLogin(on) {
    el.login.hidden = !on;
    el.chat.hidden = on;
    el.leave.hidden = on;
    el.quiet.hidden = on;
    el.membersToggle.hidden = on;
    if (on) el.name.focus(); else el.input.focus();
  }

  function rememberLast() {
    save(localStorage, LAST_KEY, { name: session.name, room: session.room });
    saveSoon();
  }

  // Starts (or resumes) a session and connects.
  function start(name, room, resume) {
    const old = load(sessionStorage, SESSION_KEY);
    if (resume && old) {
      session = old;
    } else if (old && old.name === name && old.room === room && old.lastIds) {
      session = old; // joining again as the same person: keep the log and resume from it
    } else {
      session = { name: name, room: room, lastIds: {}, entries: [] };
    }
    session.active = true;
    session.auto = !!resume;
    powers = { op: false };
    if (!Array.isArray(session.entries)) session.entries = [];
    if (!session.lastIds || typeof session.lastIds !== "object") session.lastIds = {};
    members.clear();
    drawMembers();
    redraw();
    el.loginError.textContent = "";
    showWhere();
    rememberLast();
    saveNow();
    showLogin(false);
    wanted = true;
    backoff = BACKOFF_MIN;
    takenRetries = 0;
    connect();
  }

  // ---------- user input ----------

  // ---------- logging in ----------

  function currentLogin() {
    const l = load(localStorage, LOGIN_KEY);
    if (!l || typeof l.token !== "string" || typeof l.name !== "string") return null;
    if (l.expires && Date.parse(l.expires) <= Date.now()) return null;
    return l;
  }

  function forgetLogin() {
    try { localStorage.removeItem(LOGIN_KEY); } catch (e) { /* disabled */ }
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

  el.logout.addEventListener("click", async () => {
    const l = currentLogin();
    forgetLogin();
    if (session && session.active) stop(null);
    if (l) {
      try {
        await fetch("api/logout", { method: "POST", headers: { Authorization: "Bearer " + l.token } });
      } catch (e) { /* the token is forgotten here either way */ }
    }
  });

  el.loginForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    let name = el.name.value.trim();
    const room = el.room.value.trim();
    const password = el.password.value;
    if (!name || !room) return;
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
    start(name, room, false);
  });

  // Whether this server admits registered names only (it then says so on the form).
  fetch("api/info", { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : {}))
    .then((info) => { el.needsAccount.hidden = !(info && info.require_auth === true); })
    .catch(() => {});
  showAccount();

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

  function submit() {
    const text = el.input.value;
    if (text === "") return;
    if (!joined || !send(text)) {
      el.input.classList.add("blocked");
      setTimeout(() => el.input.classList.remove("blocked"), 400);
      return; // keep the text: it can be sent once the connection is back
    }
    if (/^\/quit\s*$/i.test(text.trim())) session.active = false;
    lastSent = text;
    el.input.value = "";
    grow();
  }

  el.leave.addEventListener("click", () => {
    send("/quit");
    stop(null);
  });

  // ---------- start ----------

  const params = new URLSearchParams(location.search);
  const last = load(localStorage, LAST_KEY) || {};
  el.name.value = params.get("name") || last.name || "";
  el.room.value = params.get("room") || last.room || "";
  const previous = load(sessionStorage, SESSION_KEY);
  if (previous && previous.active && previous.name && previous.room) {
    start(previous.name, previous.room, true); // a reload: redraw and resume
  } else {
    showLogin(true);
  }
})();
