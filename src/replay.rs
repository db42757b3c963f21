//! A replay of history (on joining, or `/history`), sent a page at a time as the client takes
//! it.
//!
//! A replay of 1,000 messages of 8 KiB is megabytes. Rendered at once and queued for a client
//! that never reads, it was memory held for nothing: 100 such clients took a server from 27 MiB
//! to 2 GB. So the store is asked for one page at a time, and only once the client has taken the
//! previous page; the page waits in the member's place in its room, where it counts as the
//! member's lag (the slow-consumer rule) and towards the server's budget (`--max-queued-total`),
//! and a page not taken within [`DEADLINE`] cuts the client off. Pages are sized from the
//! member's `--max-pending`, so a long replay never makes a reader a slow consumer by itself.
//!
//! Transport-agnostic: the session drives it from its `poll_wait`, and each transport only
//! takes bytes from the room as it always does.

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::protocol::{
    render_history_end, render_history_messages, render_history_start, Format, Reply,
};
use crate::refusal::Refusal;
use crate::room::{ReplaySize, ReplayStart, Room, RoomError, Seat};
use crate::store::{Pending, StoredMessage, MAX_REPLAY};

/// Within this long the store must answer each query, and the client take each page.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Messages asked for in the first page, before any sizes are known.
const FIRST_PAGE: usize = 4;

/// What one step of a replay did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A page was handed to the room: there is something to send.
    Progress,
    /// The replay is over (its last line is queued); what waited behind it flows again.
    Done,
}

enum State {
    /// Waiting for the store to say how long the replay is.
    Sizing(ReplaySize),
    /// Waiting for the store's next page.
    Fetching(Pending),
    /// Waiting for the client to take the page it was handed.
    Sending,
    Done,
}

/// One member's replay under way (see the module's documentation).
pub struct PagedReplay {
    state: State,
    /// The last id the replay covers: later messages arrive live.
    until: u64,
    /// The last id fetched so far.
    after: u64,
    /// How many messages the replay has, as announced in its first line.
    total: usize,
    /// Messages fetched so far.
    fetched: usize,
    /// Messages fetched and not yet rendered, and their bytes.
    queue: VecDeque<StoredMessage>,
    queued_bytes: usize,
    size: PageSize,
    deadline: Pin<Box<Sleep>>,
}

impl PagedReplay {
    /// A replay whose size the store is finding; pages are sized for a member who may be
    /// `max_pending` bytes behind, in a room whose messages have at most `max_line` bytes.
    pub fn new(start: ReplayStart, max_pending: usize, max_line: usize) -> Self {
        PagedReplay {
            state: State::Sizing(start.size),
            until: start.until,
            after: 0,
            total: 0,
            fetched: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            // A page and the messages held for the next ones stay well under the lag limit.
            size: PageSize::new(
                (max_pending / 8).clamp(1024, 32 * 1024),
                max_pending / 4,
                max_line,
            ),
            deadline: Box::pin(tokio::time::sleep(DEADLINE)),
        }
    }

    fn arm(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + DEADLINE);
    }

    /// Moves the replay on: Ready once a page was handed over or the replay ended, Ready(Err)
    /// if the member is gone (cut off, also for not taking a page in time); Pending while it
    /// waits for the store or the client.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        room: &Room,
        seat: Seat,
        format: Format,
    ) -> Poll<Result<Step, RoomError>> {
        let mut buf = Vec::new();
        loop {
            match &mut self.state {
                State::Sizing(size) => {
                    let answer = match size {
                        ReplaySize::Last(rx) => ready!(self.deadline.as_mut().poll_answer(rx, cx))
                            .map(|span| (span.after, span.count)),
                        ReplaySize::After(after, rx) => {
                            let after = *after;
                            ready!(self.deadline.as_mut().poll_answer(rx, cx)).map(|n| (after, n))
                        }
                    };
                    let (after, total) = match answer {
                        Ok(size) => size,
                        Err(e) => return self.fail(room, seat, format, &e),
                    };
                    (self.after, self.total) = (after, total);
                    render_history_start(room.name(), format, total, &mut buf);
                    room.push_replay(seat, &buf, 0)?;
                    self.state = State::Sending;
                    self.arm();
                    return Poll::Ready(Ok(Step::Progress));
                }
                State::Fetching(rx) => {
                    let page = match ready!(self.deadline.as_mut().poll_answer(rx, cx)) {
                        Ok(page) => page,
                        Err(e) => return self.fail(room, seat, format, &e),
                    };
                    match page.last() {
                        // Fewer stored than counted (retention ran meanwhile): end here.
                        None => self.total = self.fetched,
                        Some(last) => {
                            self.after = last.id;
                            let bytes = self.size.observe(&page);
                            self.fetched += page.len();
                            self.queued_bytes += bytes;
                            self.queue.extend(page);
                        }
                    }
                    self.state = State::Sending;
                }
                State::Sending => {
                    if !room.replay_drained(seat)? {
                        if self.deadline.as_mut().poll(cx).is_ready() {
                            room.cut_off(seat, "history not read in time");
                            return Poll::Ready(Err(RoomError::Gone));
                        }
                        return Poll::Pending;
                    }
                    if !self.queue.is_empty() {
                        self.render_page(room.name(), format, &mut buf);
                        room.push_replay(seat, &buf, self.queued_bytes)?;
                        self.arm();
                        return Poll::Ready(Ok(Step::Progress));
                    }
                    if self.fetched >= self.total {
                        render_history_end(room.name(), format, &mut buf);
                        return self.finish(room, seat, &buf);
                    }
                    let want = self.size.next().min(self.total - self.fetched);
                    self.state = State::Fetching(room.history_page(self.after, self.until, want));
                    self.arm();
                }
                State::Done => return Poll::Ready(Ok(Step::Done)),
            }
        }
    }

    /// Renders queued messages up to about one page (at least one message).
    fn render_page(&mut self, room: &str, format: Format, buf: &mut Vec<u8>) {
        while buf.len() < self.size.page_bytes {
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= raw_size(&m);
            render_history_messages(room, format, std::slice::from_ref(&m), buf);
        }
    }

    /// The store could not answer: the client is told why, and the replay ends there.
    fn fail(
        &mut self,
        room: &Room,
        seat: Seat,
        format: Format,
        reason: &str,
    ) -> Poll<Result<Step, RoomError>> {
        let mut buf = Vec::new();
        Reply::Error(reason).render(format, &mut buf);
        self.finish(room, seat, &buf)
    }

    fn finish(&mut self, room: &Room, seat: Seat, last: &[u8]) -> Poll<Result<Step, RoomError>> {
        self.state = State::Done;
        self.queue = VecDeque::new();
        self.queued_bytes = 0;
        room.push_replay(seat, last, 0)?;
        room.end_replay(seat);
        Poll::Ready(Ok(Step::Done))
    }
}

/// The bytes a fetched message holds until it is rendered.
fn raw_size(m: &StoredMessage) -> usize {
    m.name.len() + m.text.len() + std::mem::size_of::<StoredMessage>()
}

/// How many stored messages to ask for at once, so that a page is about `page_bytes` and
/// never more than `max_bytes` however long the next messages are: learnt from the sizes seen.
#[derive(Debug, Clone, Copy)]
pub struct PageSize {
    /// About how many rendered bytes a page should have.
    pub page_bytes: usize,
    per_page: usize,
    max_per_page: usize,
}

impl PageSize {
    /// For messages of at most `max_line` bytes.
    pub fn new(page_bytes: usize, max_bytes: usize, max_line: usize) -> Self {
        let longest = max_line + std::mem::size_of::<StoredMessage>() + 64;
        PageSize {
            page_bytes,
            per_page: FIRST_PAGE,
            max_per_page: (max_bytes / longest).clamp(FIRST_PAGE, MAX_REPLAY),
        }
    }

    /// How many messages to ask for next.
    pub fn next(&self) -> usize {
        self.per_page
    }

    /// Learns from a page that arrived; returns the bytes it holds.
    pub fn observe(&mut self, page: &[StoredMessage]) -> usize {
        let bytes: usize = page.iter().map(raw_size).sum();
        if !page.is_empty() {
            let average = (bytes / page.len()).max(1);
            self.per_page = (self.page_bytes / average).clamp(1, self.max_per_page);
        }
        bytes
    }
}

/// A store answer, within the replay's deadline; a failure as the text the client is told.
trait PollAnswer {
    fn poll_answer<T, E: Display>(
        self: Pin<&mut Self>,
        rx: &mut tokio::sync::oneshot::Receiver<Result<T, E>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, String>>;
}

impl PollAnswer for Sleep {
    fn poll_answer<T, E: Display>(
        self: Pin<&mut Self>,
        rx: &mut tokio::sync::oneshot::Receiver<Result<T, E>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, String>> {
        if let Poll::Ready(answer) = Pin::new(rx).poll(cx) {
            return Poll::Ready(match answer {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(Refusal::HistoryUnavailable.to_string()),
            });
        }
        match self.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Refusal::HistoryUnavailable.to_string())),
            Poll::Pending => Poll::Pending,
        }
    }
}
