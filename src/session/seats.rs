//! The seats a session holds: one per room it is in, each a cursor into that room's log.
//!
//! A version-1 session holds exactly one, read with the connection task's own waker, as
//! before sessions could hold more: nothing is allocated for the multi-room case. A
//! version-2 session may hold many. Looking at every room on every wake-up would cost a lock
//! per room per message, so each seat gets a waker of its own that rings a [`Bell`]: the bell
//! notes which seat rang and wakes the task, which then takes from the rooms that rang only.

use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use crate::limits::SeatPass;
use crate::marks::Inbox;
use crate::refusal::Refusal;
use crate::replay::PagedReplay;
use crate::room::{Room, Seat, Take};

/// A seat in one room, with the replay under way in it, if any.
pub struct Held {
    pub room: Arc<Room>,
    pub seat: Seat,
    /// A replay under way (history on joining, `/history`). Boxed: an idle session (most of
    /// them, most of the time) then pays one pointer for it.
    pub replay: Option<Box<PagedReplay>>,
}

impl Held {
    pub fn new(room: Arc<Room>, seat: Seat) -> Self {
        Held {
            room,
            seat,
            replay: None,
        }
    }
}

/// The seats of a session. Idle connections are most of a server's: a version-1 session keeps
/// its one seat inline and nothing else; what only many rooms need is boxed.
pub enum Seats {
    /// Version 1: one room, read with the task's waker.
    One(Held),
    /// Version 2: any number of rooms (up to `--max-rooms-per-session`).
    Many(Box<Many>),
}

pub struct Many {
    list: Vec<Held>,
    /// Beside `list`, index for index: each seat's own waker (see the module doc) and the tag
    /// it rings with.
    rings: Vec<(u32, Waker)>,
    bell: Arc<Bell>,
    next_tag: u32,
    /// The bell's list of tags, swapped out on each take and back in empty: no allocation
    /// per wake-up.
    spare: Vec<u32>,
    /// Counts the rooms beyond the first against the connection limits.
    pass: Option<SeatPass>,
    /// Seats in rooms that closed the session out (a kick, a ban), for the session to leave.
    parted: Vec<Held>,
    /// A person's marks (version 2 only, hence here and not in the session, which every
    /// idle version-1 connection holds).
    marks: Option<PersonMarks>,
}

/// What a version-2 person's session holds of the marks (see [`crate::marks`]).
pub struct PersonMarks {
    /// The registered spelling: the key of the person's marks.
    pub person: String,
    pub inbox: Arc<Inbox>,
    /// The handshake's room could not be kept (the person keeps too many): told after the
    /// `marks` line.
    pub full: bool,
}

/// Where a session's seats ring when their room has something for them.
#[derive(Default)]
pub struct Bell {
    state: Mutex<BellState>,
}

#[derive(Default)]
struct BellState {
    /// The connection task, as of its last poll.
    task: Option<Waker>,
    /// The tags of the seats that rang since the task last looked.
    rang: Vec<u32>,
}

impl Bell {
    fn state(&self) -> std::sync::MutexGuard<'_, BellState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ring(&self, tag: u32) {
        let task = {
            let mut state = self.state();
            if !state.rang.contains(&tag) {
                state.rang.push(tag);
            }
            state.task.clone()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// The tag of a ring that is no seat's (see [`Seats::bell_waker`]); seats' tags count up from 0
/// and never reach it in practice (a seat is added per join).
const NO_SEAT: u32 = u32::MAX - 1;

/// A seat's waker: rings the bell with the seat's tag.
struct SeatWaker {
    bell: Arc<Bell>,
    tag: u32,
}

impl Wake for SeatWaker {
    fn wake(self: Arc<Self>) {
        self.bell.ring(self.tag);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.bell.ring(self.tag);
    }
}

impl Seats {
    pub fn many(pass: Option<SeatPass>) -> Self {
        Seats::Many(Box::new(Many {
            pass,
            list: Vec::new(),
            rings: Vec::new(),
            bell: Arc::default(),
            next_tag: 0,
            spare: Vec::new(),
            parted: Vec::new(),
            marks: None,
        }))
    }

    /// A version-2 person's marks, if this is one.
    pub fn marks(&self) -> Option<&PersonMarks> {
        match self {
            Seats::One(_) => None,
            Seats::Many(many) => many.marks.as_ref(),
        }
    }

    pub fn marks_mut(&mut self) -> Option<&mut PersonMarks> {
        match self {
            Seats::One(_) => None,
            Seats::Many(many) => many.marks.as_mut(),
        }
    }

    /// Makes the session a person's device (version 2; a version-1 session keeps none).
    pub fn set_marks(&mut self, marks: PersonMarks) {
        if let Seats::Many(many) = self {
            many.marks = Some(marks);
        }
    }

    pub fn take_marks(&mut self) -> Option<PersonMarks> {
        match self {
            Seats::One(_) => None,
            Seats::Many(many) => many.marks.take(),
        }
    }

    pub fn as_slice(&self) -> &[Held] {
        match self {
            Seats::One(held) => std::slice::from_ref(held),
            Seats::Many(many) => &many.list,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [Held] {
        match self {
            Seats::One(held) => std::slice::from_mut(held),
            Seats::Many(many) => &mut many.list,
        }
    }

    /// The seat in the room called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.as_slice().iter().position(|h| h.room.name() == name)
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Adds a seat (version 2) and has it looked at once: its join line is already waiting.
    pub fn add(&mut self, held: Held) {
        match self {
            Seats::One(one) => *one = held,
            Seats::Many(many) => {
                let tag = many.next_tag;
                many.next_tag = tag.wrapping_add(1);
                let waker = Waker::from(Arc::new(SeatWaker {
                    bell: many.bell.clone(),
                    tag,
                }));
                many.list.push(held);
                many.rings.push((tag, waker));
                many.bell.ring(tag);
            }
        }
    }

    /// A waker that rings the bell without naming a room (version 2): for what the session
    /// is pushed besides its rooms (a person's marks). None for version 1.
    pub fn bell_waker(&self) -> Option<Waker> {
        match self {
            Seats::One(_) => None,
            Seats::Many(many) => Some(Waker::from(Arc::new(SeatWaker {
                bell: many.bell.clone(),
                tag: NO_SEAT,
            }))),
        }
    }

    /// Makes room for one more seat before a join (version 2): the first is the connection's
    /// own, each further one counts against the connection limits (see [`SeatPass`]).
    pub fn reserve(&mut self) -> Result<(), Refusal> {
        match self {
            Seats::Many(many) if !many.list.is_empty() => match many.pass.as_mut() {
                Some(pass) => pass.take(),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Gives back what [`Seats::reserve`] took, for a join that failed.
    pub fn unreserve(&mut self) {
        if let Seats::Many(many) = self {
            if let (false, Some(pass)) = (many.list.is_empty(), many.pass.as_mut()) {
                pass.give_back();
            }
        }
    }

    /// Removes the seat at `index` (version 2; a version-1 session always keeps its one).
    pub fn remove(&mut self, index: usize) -> Option<Held> {
        match self {
            Seats::One(_) => None,
            Seats::Many(many) => (index < many.list.len()).then(|| {
                many.rings.remove(index);
                let held = many.list.remove(index);
                if let (false, Some(pass)) = (many.list.is_empty(), many.pass.as_mut()) {
                    pass.give_back();
                }
                held
            }),
        }
    }

    /// Empties the list (the session is leaving every room).
    pub fn drain(&mut self) -> Vec<Held> {
        match self {
            Seats::One(_) => Vec::new(),
            Seats::Many(many) => {
                many.rings.clear();
                if let Some(pass) = many.pass.as_mut() {
                    pass.give_back_all();
                }
                std::mem::take(&mut many.list)
            }
        }
    }

    /// The seats of rooms that closed the session out since the last call.
    pub fn take_parted(&mut self) -> Vec<Held> {
        match self {
            Seats::One(_) => Vec::new(),
            Seats::Many(many) => std::mem::take(&mut many.parted),
        }
    }

    /// False once the session was cut off in any of its rooms.
    pub fn present(&self) -> bool {
        self.as_slice().iter().all(|h| h.room.contains(h.seat))
    }

    /// Has every room wake the task if the session is cut off while its socket is full.
    pub fn watch(&self, task: &Waker) {
        match self {
            Seats::One(h) => h.room.watch(h.seat, task),
            Seats::Many(many) => {
                for (h, (_, waker)) in many.list.iter().zip(&many.rings) {
                    h.room.watch(h.seat, waker);
                }
                many.bell.state().task = Some(task.clone());
            }
        }
    }

    /// Copies up to about `max` bytes (whole lines) of what the rooms hold for the client into
    /// `out`. The result is as [`Room::take`]'s, over all rooms: `Gone` if cut off in any.
    pub fn take(&mut self, out: &mut Vec<u8>, max: usize, task: &Waker) -> Take {
        let many = match self {
            Seats::One(held) => return held.room.take(held.seat, out, max, task),
            Seats::Many(many) => many,
        };
        let mut rang = std::mem::take(&mut many.spare);
        {
            let mut state = many.bell.state();
            match &mut state.task {
                Some(w) => w.clone_from(task),
                None => state.task = Some(task.clone()),
            }
            std::mem::swap(&mut state.rang, &mut rang);
        }
        let start = out.len();
        let mut more = Vec::new();
        for &tag in &rang {
            let Some(i) = many.rings.iter().position(|r| r.0 == tag) else {
                continue; // a room left since it rang
            };
            let used = out.len() - start;
            if used >= max {
                more.push(tag);
                continue;
            }
            let (Some(h), Some((_, waker))) = (many.list.get(i), many.rings.get(i)) else {
                continue;
            };
            match h.room.take(h.seat, out, max - used, waker) {
                Take::Gone => return Take::Gone,
                Take::Parted => {
                    // Closed out of that room alone: the session stays in its others.
                    many.rings.remove(i);
                    let held = many.list.remove(i);
                    if let (false, Some(pass)) = (many.list.is_empty(), many.pass.as_mut()) {
                        pass.give_back();
                    }
                    many.parted.push(held);
                    more.push(u32::MAX);
                }
                Take::Data => more.push(tag),
                Take::Drained | Take::Empty => {}
            }
        }
        rang.clear();
        many.spare = rang;
        // A parted seat's last lines wait in its room for the session to take (`parted`).
        more.retain(|&tag| tag != u32::MAX);
        if !many.parted.is_empty() {
            return Take::Data;
        }
        if !more.is_empty() {
            let mut state = many.bell.state();
            for tag in more {
                if !state.rang.contains(&tag) {
                    state.rang.push(tag);
                }
            }
            return Take::Data;
        }
        if out.len() > start {
            Take::Drained
        } else {
            Take::Empty
        }
    }
}
