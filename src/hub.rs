//! The room registry: finds or creates a room on join and forgets it when its last member leaves.
//!
//! The registry's lock is taken only to join, leave and list rooms, never per message: once a
//! session holds its `Arc<Room>`, messages go straight to the room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Users;
use std::future::Future;
use std::pin::Pin;

use crate::bus::{Envelope, PrivateNote};
use crate::grace::{Due, Graces};
use crate::marks::{Edit, Marks, Outcome};
use crate::moderation::{Policy, Who};
use crate::names::{Alone, ClaimError, Names, PendingClaim};
use crate::protocol::{Format, RoomEvent};
use crate::refusal::Refusal;
use crate::room::{Budget, Joiner, Parting, Replay, ReplayStart, Room, RoomError, Seat};
use crate::sequencer::{Here, Sequencer};
use crate::settings::HubSettings;
use crate::store::Store;

pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    max_pending: usize,
    store: Arc<dyn Store>,
    /// `--max-rooms` and `--max-room-members`: a reload changes them; read once per join.
    max_rooms: AtomicUsize,
    max_members: AtomicUsize,
    /// Bytes queued in all rooms together.
    pub budget: Arc<Budget>,
    /// The registered names (a name can be taken by `/nick` only if it is not one).
    pub users: Arc<Users>,
    /// Who knows a name is taken beyond this server's rooms ([`Alone`] on one server).
    names: Arc<dyn Names>,
    /// Who orders the rooms' events ([`Here`] on one server), handed to each room.
    sequencer: Arc<dyn Sequencer>,
    /// The moderation rules: who may enter and speak where, and who may act on whom.
    pub policy: Arc<Policy>,
    /// The marks of the persons with a session here (rooms kept, read positions, levels).
    pub marks: Arc<Marks>,
    /// The leave grace (`--leave-grace`): how long a member whose connection dropped stays.
    leave_grace: std::time::Duration,
    /// Its ghosts' deadlines (see [`crate::grace`]), handed to every room.
    graces: Arc<Graces>,
}

/// An event the cluster's feed read from the stream, for [`Hub::deliver_batch`].
pub struct Delivery {
    /// The room's name (one `Arc` for every event of the room the feed has read lately).
    pub room: Arc<str>,
    /// Its place in the stream: the order, and a message's id.
    pub seq: u64,
    /// `None`: not a machat event (skipped, but counted as seen).
    pub envelope: Option<Envelope>,
    /// A person's join or leave on this node (see [`Room::deliver`]).
    pub ours: bool,
}

/// A claim's answer: at once (one server, or a cluster that could answer without asking), or
/// to wait for.
pub enum Claim {
    Done(Result<(), ClaimError>),
    Pending(Pin<Box<dyn Future<Output = Result<(), ClaimError>> + Send>>),
}

/// How long a join or rename waits for the cluster to confirm a name.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Hub {
    pub fn new(max_pending: usize, store: Arc<dyn Store>) -> Self {
        Self::with_settings(HubSettings::unbounded(max_pending), store)
    }

    /// A hub that refuses a new room beyond `max_rooms` and a member beyond `max_members` in
    /// one room (so one client cannot fill the server with rooms, nor a crowd one room).
    pub fn with_settings(settings: HubSettings, store: Arc<dyn Store>) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            max_pending: settings.max_pending,
            store,
            max_rooms: AtomicUsize::new(settings.max_rooms),
            max_members: AtomicUsize::new(settings.max_members),
            budget: Arc::new(Budget::new(settings.max_queued_total)),
            users: Users::none(),
            names: Arc::new(Alone),
            sequencer: Arc::new(Here),
            policy: Arc::new(Policy::open_to_all()),
            marks: Marks::in_memory(),
            leave_grace: settings.leave_grace,
            graces: Arc::new(Graces::new(settings.leave_grace, true)),
        }
    }

    fn max_rooms(&self) -> usize {
        self.max_rooms.load(Ordering::Relaxed)
    }

    fn max_members(&self) -> usize {
        self.max_members.load(Ordering::Relaxed)
    }

    /// New `--max-rooms` and `--max-room-members` (a reload): rooms and members already there
    /// stay; the next join follows them.
    pub fn set_room_limits(&self, max_rooms: usize, max_members: usize) {
        self.max_rooms.store(max_rooms, Ordering::Relaxed);
        self.max_members.store(max_members, Ordering::Relaxed);
    }

    /// The same hub, keeping marks in `marks`.
    pub fn with_marks(mut self, marks: Arc<Marks>) -> Self {
        self.marks = marks;
        self
    }

    /// The key of a person's marks: their registered spelling.
    pub fn person_key(&self, name: &str) -> String {
        self.users
            .registered_name(name)
            .unwrap_or_else(|| name.to_owned())
    }

    /// The highest message id of `room` (a mark's `last`, the bound of a `read`): its own if
    /// it has members here, else the store's.
    pub fn last_id(&self, room: &str) -> u64 {
        match self.room(room) {
            Some(r) => r.last_id(),
            None => self.store.last_id(room),
        }
    }

    /// Changes a person's marks (see [`Marks::change`]).
    pub fn mark(&self, person: &str, edit: Edit) -> Outcome {
        self.marks.change(person, edit, &|room| self.last_id(room))
    }

    /// Adds a mark for `room` to `person`'s, read up to the room's last message.
    pub fn keep_room(&self, person: &str, room: &str, with: Option<&str>) -> Outcome {
        let edit = Edit::Add {
            room: room.to_owned(),
            read: self.last_id(room),
            with: with.map(str::to_owned),
            at: crate::marks::now_ms(),
        };
        self.mark(person, edit)
    }

    /// A message of person `from` to person `to` kept in their direct conversation (a `/msg`
    /// between registered names): both keep the conversation, and its members see the message.
    /// Returns the conversation's room.
    pub fn converse(&self, from: &str, to: &str, text: &str) -> String {
        let room = crate::marks::conversation(from, to);
        // Posted first: both have seen it (one wrote it, the other got it privately), so a
        // mark made now is read up to it.
        self.post(&room, from, text);
        self.keep_room(from, &room, Some(to));
        self.keep_room(to, &room, Some(from));
        room
    }

    /// A message from `name` to `room`, which may have no members here (see [`Room::post`]).
    pub fn post(&self, room: &str, name: &str, text: &str) -> u64 {
        let rooms = self.lock();
        match rooms.get(room) {
            Some(r) => r.post(name, text),
            None => {
                // A room for this one message, under the registry's lock as a join's creation
                // is, so ids stay in order; the store keeps its last id as for a room emptied.
                let r = Arc::new(Room::with_budget(
                    room,
                    self.max_pending,
                    self.store.clone(),
                    self.budget.clone(),
                    self.sequencer.clone(),
                ));
                let id = r.post(name, text);
                self.store.forget(room);
                id
            }
        }
    }

    /// The same hub, following `policy`.
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// Whether `room` exists: someone is in it (here, or on another node), or it has kept
    /// settings. A join of a room that does not is a creation (see `--room-creation`).
    pub fn exists(&self, room: &str) -> bool {
        self.lock().contains_key(room)
            || self.policy.has_record(room)
            || (self.names.shared() && !self.names.members(room).is_empty())
    }

    /// Whether `who` may enter `room` (bans, modes, `--room-creation`); Ok(true) if the room
    /// is new (see [`Hub::entered`]). A direct conversation (`@`) admits its two parties only,
    /// on version 2 (`v2`), and follows no other rule.
    pub fn admit(
        &self,
        room: &str,
        who: &Who<'_>,
        key: Option<&str>,
        v2: bool,
    ) -> Result<bool, Refusal> {
        if crate::marks::is_conversation(room) {
            let party = v2
                && who.person
                && self
                    .marks
                    .mark(&self.person_key(who.name), room)
                    .is_some_and(|m| m.with.is_some());
            return if party {
                Ok(false)
            } else {
                Err(Refusal::Conversation)
            };
        }
        let exists = self.exists(room);
        self.policy.admit(room, who, key, exists)?;
        Ok(!exists)
    }

    /// After a join: a new room is owned by its registered creator, and the member is shown
    /// the topic (if one is set), after its own join line.
    pub fn entered(&self, room: &Room, seat: Seat, who: &Who<'_>, new: bool, format: Format) {
        // A conversation makes nobody its owner.
        if new && !crate::marks::is_conversation(room.name()) {
            self.policy
                .created(room.name(), who.person.then_some(who.name));
        }
        if let Some(topic) = self.policy.topic(room.name()) {
            let mut line = Vec::new();
            crate::moderation::render_topic(room.name(), &topic, format, &mut line);
            room.greet(seat, line);
        }
    }

    /// Closes every connection a server ban covers out of every room on this node (each is
    /// told why); returns how many. Server admins are never covered.
    pub fn enforce_server_bans(&self) -> usize {
        let why = Refusal::ServerBanned(String::new()).to_string();
        let why = crate::protocol::Reply::Error(&why);
        let banned = |name: &str, addr: IpAddr| {
            !self.users.is_admin(name)
                && self
                    .policy
                    .server_ban(&crate::protocol::name_key(name), Some(addr))
                    .is_some()
        };
        let mut closed = 0;
        for room in self.live_rooms() {
            closed += room.close_out_where(banned, &why);
        }
        closed
    }

    /// The rooms this hub has now (for `/wall`, server bans and the admin API).
    pub fn live_rooms(&self) -> Vec<Arc<Room>> {
        self.lock().values().cloned().collect()
    }

    /// The room called `name`, if it has members on this node.
    pub fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.lock().get(name).cloned()
    }

    /// Shows a moderation action in a room that may have no members on this node (a wall
    /// notice reaches every room of the cluster).
    pub fn act_anywhere(&self, room: &str, act: crate::act::Act<'_>) {
        match self.room(room) {
            Some(r) => r.act(act),
            None => {
                let _ = self
                    .sequencer
                    .announce(room, &crate::protocol::RoomEvent::Act(act), false);
            }
        }
    }

    /// The same hub, in cluster mode: rooms' events are ordered by `sequencer`, names are
    /// claimed from `names`.
    pub fn with_cluster(mut self, sequencer: Arc<dyn Sequencer>, names: Arc<dyn Names>) -> Self {
        // A guest's name is claimed across the cluster, for one node's connection: a guest
        // back on another node would find it taken for the grace. So only persons, whose
        // presence is per node, get a grace in a cluster (see `crate::grace`).
        self.graces = Arc::new(Graces::new(self.leave_grace, !names.shared()));
        self.sequencer = sequencer;
        self.names = names;
        self
    }

    /// True when other servers share the rooms (see [`Names::shared`]).
    pub fn shared(&self) -> bool {
        self.names.shared()
    }

    /// How far behind a member may fall (`--max-pending`): also what a connection may hold of
    /// answers that belong to no room.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// False when this server keeps no history at all (`--history off`).
    pub fn keeps_history(&self) -> bool {
        self.store.keeps()
    }

    /// Claims `name` in `room` before a join or a rename, everywhere the room is (see
    /// [`Names::claim`]); waits at most [`CLAIM_WAIT`] for the answer.
    pub async fn claim(
        &self,
        room: &str,
        name: &str,
        owner: u64,
        person: bool,
    ) -> Result<(), ClaimError> {
        match self.claim_now(room, name, owner, person) {
            Claim::Done(answer) => answer,
            Claim::Pending(answer) => answer.await,
        }
    }

    /// [`Hub::claim`] for a caller that cannot wait here (a session, inside its connection's
    /// poll): the answer if it is already there, else a future of it.
    pub fn claim_now(&self, room: &str, name: &str, owner: u64, person: bool) -> Claim {
        let mut pending = self.names.claim(room, name, owner, person);
        match pending.try_recv() {
            Ok(answer) => return Claim::Done(noted(room, name, answer)),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return Claim::Done(Err(ClaimError::Unavailable("no answer".into())));
            }
        }
        let names = self.names.clone();
        let (room, name) = (room.to_owned(), name.to_owned());
        Claim::Pending(Box::pin(async move {
            waited(names, &room, &name, owner, person, pending).await
        }))
    }

    /// Why a claim for a join was refused, as the client is told.
    pub fn claim_refusal(&self, err: &ClaimError, name: &str, room: &str) -> Refusal {
        match err {
            ClaimError::Taken => self.refusal(&RoomError::NameTaken, name, room),
            ClaimError::Unavailable(_) => Refusal::ClusterUnavailable,
        }
    }

    /// Gives back a name claimed with [`Hub::claim`].
    pub fn release(&self, room: &str, name: &str, owner: u64, person: bool) {
        self.names.release(room, name, owner, person);
    }

    /// Appends the events the cluster delivered, in stream order, each to this node's room of
    /// its name if there is one, and records the stream sequence up to which this node has
    /// seen. The registry's lock is held across the batch (taken once, not per event) and
    /// `seen` is stored before it is let go: a room created meanwhile starts its history
    /// there, so none of the room's events is both replayed and delivered live, nor neither.
    /// A run of events of one room looks the room up once. A moderation action lets the lock
    /// go for the rules to change first (`Policy::observe`), `seen` stored up to it.
    pub fn deliver_batch(&self, batch: &[Delivery], seen: &AtomicU64) {
        let Some(last) = batch.last() else { return };
        let mut rooms = self.lock();
        let mut current: Option<(&Arc<str>, Option<Arc<Room>>)> = None;
        let mut done = seen.load(Ordering::Acquire);
        for d in batch {
            let Some(envelope) = &d.envelope else {
                done = d.seq;
                continue;
            };
            if let RoomEvent::Act(act) = envelope.as_room_event(d.seq) {
                // The rules change on this node as the room shows the change, before the
                // bucket's copy arrives: a mute shown here holds here at once.
                seen.store(done, Ordering::Release);
                drop(rooms);
                self.policy.observe(&d.room, &act);
                rooms = self.lock();
                current = None;
            }
            let same = current
                .as_ref()
                .is_some_and(|(name, _)| Arc::ptr_eq(name, &d.room) || ***name == *d.room);
            if !same {
                current = Some((&d.room, rooms.get(&*d.room).cloned()));
            }
            if let Some((_, Some(room))) = &current {
                room.deliver(d.seq, envelope, d.ours);
            }
            done = d.seq;
        }
        seen.store(done.max(last.seq), Ordering::Release);
        drop(rooms);
    }

    /// Delivers a private message another node passed on to this node's connections in
    /// `room`, if it has the room.
    pub fn deliver_private(&self, room: &str, note: &PrivateNote) {
        let room = self.lock().get(room).cloned();
        if let Some(room) = room {
            room.private_from_elsewhere(note);
        }
    }

    /// `/msg`: a private message from `seat` to `to`, who may be in the room on this server
    /// or (in a cluster) on another.
    pub fn private(&self, room: &Room, seat: Seat, to: &str, text: &str) -> Result<(), RoomError> {
        let elsewhere = || self.names.members(room.name()).iter().any(|n| n == to);
        room.private(seat, to, text, elsewhere)
    }

    /// The members of `room`: across the cluster in cluster mode.
    pub fn who(&self, room: &Room) -> Vec<String> {
        let mut names = room.names();
        let elsewhere = self.names.members(room.name());
        if !elsewhere.is_empty() {
            names.extend(elsewhere);
            names.sort_unstable();
            names.dedup();
        }
        names
    }

    /// The members of `room` by name, here and (in a cluster) on other nodes.
    pub fn members_of(&self, room: &str) -> Vec<String> {
        match self.room(room) {
            Some(r) => self.who(&r),
            None => {
                let mut names = self.names.members(room);
                names.sort_unstable();
                names.dedup();
                names
            }
        }
    }

    /// Deletes a stored message of `room` (see [`Store::delete`]).
    pub fn delete_message(
        &self,
        room: &str,
        id: u64,
        only_by: Option<&str>,
    ) -> crate::store::PendingDelete {
        self.store.delete(room, id, only_by)
    }

    /// The same hub, knowing the registered names.
    pub fn with_users(mut self, users: Arc<Users>) -> Self {
        self.users = users;
        self
    }

    /// While the bytes queued in all rooms are over `max`, cuts off the member with the most
    /// unread bytes, the largest first. Returns how many were cut.
    pub fn enforce_budget(&self) -> usize {
        let max = self.budget.max();
        let mut cut = 0;
        while self.budget.used() > max && cut < 10_000 {
            let rooms: Vec<Arc<Room>> = self.lock().values().cloned().collect();
            let largest = rooms
                .iter()
                .filter_map(|r| r.largest_lag().map(|(lag, seat)| (lag, seat, r)))
                .max_by_key(|(lag, _, _)| *lag);
            let Some((lag, seat, room)) = largest else {
                break;
            };
            if lag == 0 || !room.cut_off(seat, "server over --max-queued-total") {
                break;
            }
            cut += 1;
        }
        cut
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins `room` (creating it), unless `name` is already taken there. A `person`
    /// connection may join its person's other connections (see [`Room::join_replaying`]).
    pub fn join(&self, room: &str, who: Joiner<'_>) -> Result<(Arc<Room>, Seat), RoomError> {
        self.join_replaying(room, who, None)
            .map(|(room, seat, _)| (room, seat))
    }

    /// Joins (see [`Hub::join`]) and queries the history to replay (see [`Room::join_replaying`]).
    pub fn join_replaying(
        &self,
        room: &str,
        who: Joiner<'_>,
        replay: Option<Replay>,
    ) -> Result<(Arc<Room>, Seat, Option<ReplayStart>), RoomError> {
        let mut rooms = self.lock();
        let entry = match rooms.get(room) {
            // Every join holds the registry's lock, so the count cannot grow meanwhile. A
            // member back within its leave grace takes the place it held.
            Some(r) if r.member_count() >= self.max_members() && !r.would_return(&who) => {
                return Err(RoomError::Full)
            }
            Some(r) => r.clone(),
            None if rooms.len() >= self.max_rooms() => return Err(RoomError::TooManyRooms),
            None => {
                let r = Room::with_budget(
                    room,
                    self.max_pending,
                    self.store.clone(),
                    self.budget.clone(),
                    self.sequencer.clone(),
                );
                let r = Arc::new(r.with_graces(self.graces.clone()));
                // Under the registry's lock, as deliveries are: nothing slips in between.
                r.seed_persons(self.names.persons(room));
                rooms.insert(room.to_owned(), r.clone());
                r
            }
        };
        // Joining under the registry's lock means a room being emptied cannot be dropped from
        // the registry while someone joins it.
        match entry.join_replaying(who, replay) {
            Ok((seat, history)) => Ok((entry, seat, history)),
            Err(e) => {
                if entry.member_count() == 0 {
                    rooms.remove(room);
                    self.store.forget(room);
                }
                Err(e)
            }
        }
    }

    /// Leaves a room (see [`Room::leave`]) and forgets the room if it is now empty.
    pub fn leave(&self, room: &Arc<Room>, seat: Seat, out: &mut Vec<u8>, announce: bool) {
        let how = if announce {
            Parting::Told
        } else {
            Parting::Silent
        };
        self.part(room, seat, out, how);
    }

    /// [`Hub::leave`] as `how` says (see [`Room::part`]); true if the member stays as a ghost
    /// for its leave grace: its name's claim is then kept until the grace ends.
    pub fn part(&self, room: &Arc<Room>, seat: Seat, out: &mut Vec<u8>, how: Parting) -> bool {
        let mut rooms = self.lock();
        let (left, ghost) = room.part(seat, out, how);
        if left == 0 {
            self.forget_if_empty(&mut rooms, room);
        }
        ghost
    }

    fn forget_if_empty(&self, rooms: &mut HashMap<String, Arc<Room>>, room: &Arc<Room>) {
        if let Some(r) = rooms.get(room.name()) {
            if Arc::ptr_eq(r, room) && r.member_count() == 0 {
                rooms.remove(room.name());
                self.store.forget(room.name());
            }
        }
    }

    /// Ends ghosts as their leave grace runs out, for ever (one task per server).
    pub async fn run_graces(self: Arc<Self>) {
        loop {
            let due = self.graces.next().await;
            self.end_grace(&due, true);
        }
    }

    /// Ends one ghost's grace: the room is told it left (if `announce` and it did not come
    /// back meanwhile), its name's claim goes back, and an emptied room is forgotten.
    fn end_grace(&self, due: &Due, announce: bool) {
        {
            let mut rooms = self.lock();
            if let Some(room) = rooms.get(&*due.room).cloned() {
                room.end_grace(due.owner, announce);
                self.forget_if_empty(&mut rooms, &room);
            }
        }
        // Also if it came back: the claim was its old connection's (a person's new one holds
        // the presence too, so it stays).
        self.names
            .release(&due.room, &due.name, due.owner, due.person);
    }

    /// At shutdown: no more ghosts, and the ones waiting leave now, told only where other
    /// servers share the rooms (their members stay), as every member's leave at shutdown is.
    pub fn end_graces(&self) {
        let announce = self.names.shared();
        for due in self.graces.close() {
            self.end_grace(&due, announce);
        }
    }

    /// Rooms and their member counts: the `limit` busiest (ties by name), and how many more exist.
    pub fn rooms(&self, limit: usize) -> (Vec<(String, usize)>, usize) {
        let rooms: Vec<Arc<Room>> = self.lock().values().cloned().collect();
        let mut list: Vec<(String, usize)> = rooms
            .iter()
            .map(|r| (r.name().to_owned(), r.people()))
            .filter(|(name, n)| *n > 0 && !crate::marks::is_conversation(name))
            .collect();
        let elsewhere = self.names.rooms();
        if !elsewhere.is_empty() {
            // The cluster's view counts this node's members too, once they are confirmed; a
            // room just joined here may not be in it yet.
            let mut all: HashMap<String, usize> = elsewhere.into_iter().collect();
            for (name, n) in list.drain(..) {
                let c = all.entry(name).or_insert(0);
                *c = (*c).max(n);
            }
            list = all
                .into_iter()
                .filter(|(name, n)| *n > 0 && !crate::marks::is_conversation(name))
                .collect();
        }
        list.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let more = list.len().saturating_sub(limit);
        list.truncate(limit);
        (list, more)
    }

    /// Wakes every member of every room (at shutdown, so each notices and says goodbye).
    pub fn wake_everyone(&self) {
        let rooms: Vec<Arc<Room>> = self.lock().values().cloned().collect();
        for room in rooms {
            room.wake_everyone();
        }
    }

    /// Why a join was refused, as the client is told.
    pub fn refusal(&self, err: &RoomError, name: &str, room: &str) -> Refusal {
        match err {
            RoomError::Full => Refusal::RoomFull {
                room: room.into(),
                max: self.max_members(),
            },
            RoomError::TooManyRooms => Refusal::TooManyRooms(self.max_rooms()),
            RoomError::LooksLike(like) => Refusal::TooMuchLike {
                name: name.into(),
                like: like.clone(),
                place: format!("room {room}"),
            },
            _ => Refusal::NameTaken {
                name: name.into(),
                place: format!("room {room}"),
            },
        }
    }

    pub fn room_count(&self) -> usize {
        self.lock().len()
    }
}

/// Waits for a claim's answer, at most [`CLAIM_WAIT`]; one that does not come in time is
/// given back, since it may still land.
async fn waited(
    names: Arc<dyn Names>,
    room: &str,
    name: &str,
    owner: u64,
    person: bool,
    pending: PendingClaim,
) -> Result<(), ClaimError> {
    match tokio::time::timeout(CLAIM_WAIT, pending).await {
        Ok(Ok(answer)) => noted(room, name, answer),
        Ok(Err(_)) | Err(_) => {
            names.release(room, name, owner, person);
            Err(ClaimError::Unavailable("no answer in time".into()))
        }
    }
}

/// Logs a claim the cluster could not answer (a taken name is no news).
fn noted(room: &str, name: &str, answer: Result<(), ClaimError>) -> Result<(), ClaimError> {
    if let Err(ClaimError::Unavailable(why)) = &answer {
        tracing::warn!(room, name, why, "cannot claim a name");
    }
    answer
}
