//! The room registry: finds or creates a room on join and forgets it when its last member leaves.
//!
//! The registry's lock is taken only to join, leave and list rooms, never per message: once a
//! session holds its `Arc<Room>`, messages go straight to the room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::Format;
use crate::room::{Replay, ReplayStart, Room, RoomError, Seat};
use crate::store::Store;

pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    max_pending: usize,
    store: Arc<dyn Store>,
}

impl Hub {
    pub fn new(max_pending: usize, store: Arc<dyn Store>) -> Self {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            max_pending,
            store,
        }
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
            Some(r) => r.clone(),
            None => {
                let r = Arc::new(Room::new(room, self.max_pending, self.store.clone()));
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

    pub fn room_count(&self) -> usize {
        self.lock().len()
    }
}
