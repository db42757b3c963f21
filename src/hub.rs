//! The room registry: finds or creates a room on join and forgets it when its last member leaves.
//!
//! The registry's lock is taken only to join, leave and list rooms, never per message: once a
//! session holds its `Arc<Room>`, messages go straight to the room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Users;
use crate::protocol::Format;
use crate::room::{Budget, Replay, ReplayStart, Room, RoomError, Seat};
use crate::store::Store;

pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    max_pending: usize,
    store: Arc<dyn Store>,
    max_rooms: usize,
    max_members: usize,
    /// Bytes queued in all rooms together.
    pub budget: Arc<Budget>,
    /// The registered names (a name can be taken by `/nick` only if it is not one).
    pub users: Arc<Users>,
}

impl Hub {
    pub fn new(max_pending: usize, store: Arc<dyn Store>) -> Self {
        Self::with_limits(max_pending, store, usize::MAX, usize::MAX, usize::MAX)
    }

    /// A hub that refuses a new room beyond `max_rooms` and a member beyond `max_members` in
    /// one room (so one client cannot fill the server with rooms, nor a crowd one room).
    pub fn with_limits(
        max_pending: usize,
        store: Arc<dyn Store>,
        max_rooms: usize,
        max_members: usize,
        max_queued_total: usize,
    ) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            max_pending,
            store,
            max_rooms,
            max_members,
            budget: Arc::new(Budget::new(max_queued_total)),
            users: Users::none(),
        }
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
            if lag == 0 || !room.cut_off(seat) {
                break;
            }
            cut += 1;
        }
        cut
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins `room` (creating it), unless `name` is already taken there.
    pub fn join(
        &self,
        room: &str,
        id: u64,
        name: &str,
        format: Format,
    ) -> Result<(Arc<Room>, Seat), RoomError> {
        self.join_replaying(room, id, name, format, None)
            .map(|(room, seat, _)| (room, seat))
    }

    /// Joins (see [`Hub::join`]) and queries the history to replay (see [`Room::join_replaying`]).
    pub fn join_replaying(
        &self,
        room: &str,
        id: u64,
        name: &str,
        format: Format,
        replay: Option<Replay>,
    ) -> Result<(Arc<Room>, Seat, Option<ReplayStart>), RoomError> {
        let mut rooms = self.lock();
        let entry = match rooms.get(room) {
            // Every join holds the registry's lock, so the count cannot grow meanwhile.
            Some(r) if r.member_count() >= self.max_members => return Err(RoomError::Full),
            Some(r) => r.clone(),
            None if rooms.len() >= self.max_rooms => return Err(RoomError::TooManyRooms),
            None => {
                let r = Arc::new(Room::with_budget(
                    room,
                    self.max_pending,
                    self.store.clone(),
                    self.budget.clone(),
                ));
                rooms.insert(room.to_owned(), r.clone());
                r
            }
        };
        // Joining under the registry's lock means a room being emptied cannot be dropped from
        // the registry while someone joins it.
        match entry.join_replaying(id, name, format, replay) {
            Ok((seat, history)) => Ok((entry, seat, history)),
            Err(e) => {
                if entry.member_count() == 0 {
                    rooms.remove(room);
                }
                Err(e)
            }
        }
    }

    /// Leaves a room (see [`Room::leave`]) and forgets the room if it is now empty.
    pub fn leave(&self, room: &Arc<Room>, seat: Seat, out: &mut Vec<u8>, announce: bool) {
        let mut rooms = self.lock();
        if room.leave(seat, out, announce) == 0 {
            if let Some(r) = rooms.get(room.name()) {
                if Arc::ptr_eq(r, room) && r.member_count() == 0 {
                    rooms.remove(room.name());
                }
            }
        }
    }

    /// Rooms and their member counts: the `limit` busiest (ties by name), and how many more exist.
    pub fn rooms(&self, limit: usize) -> (Vec<(String, usize)>, usize) {
        let rooms: Vec<Arc<Room>> = self.lock().values().cloned().collect();
        let mut list: Vec<(String, usize)> = rooms
            .iter()
            .map(|r| (r.name().to_owned(), r.member_count()))
            .filter(|(_, n)| *n > 0)
            .collect();
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
    pub fn refusal(&self, err: &RoomError, name: &str, room: &str) -> String {
        match err {
            RoomError::Full => format!("room {room} is full ({} members)", self.max_members),
            RoomError::TooManyRooms => {
                format!("too many rooms on this server ({})", self.max_rooms)
            }
            _ => format!("name {name} is already taken in room {room}"),
        }
    }

    pub fn room_count(&self) -> usize {
        self.lock().len()
    }
}
