//! FIFO pairing of requests with responses, shared by the two directions' decoders.
//!
//! HTTP/1.x has no message ids: the n-th final response answers the n-th request. So pairing is
//! a queue, and the only way to keep it aligned after loss is to keep one queue entry per
//! message even when the message itself is unreadable (a *placeholder* request with no head, or
//! a response marked lost). Entries are emitted from the front only, which is what makes the
//! output come in request order.

use std::collections::VecDeque;

use super::head::MethodKind;
use super::{Exchange, Http1Stats, MAX_UNANSWERED, RequestHead, ResponseHead};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// No final response head yet: the next one is ours.
    Waiting,
    /// Final response head seen, body in progress.
    Active,
    Done,
}

struct Entry {
    id: u64,
    /// None: a request we know was sent (its bytes were lost) but cannot report; it still takes
    /// one response so that the following pairs stay aligned.
    request: Option<RequestHead>,
    method: MethodKind,
    req_start: u64,
    req_end: u64,
    req_body: u64,
    req_done: bool,
    req_partial: bool,
    answer: Answer,
    response: Option<ResponseHead>,
    resp_start: u64,
    resp_end: u64,
    resp_body: u64,
    resp_partial: bool,
}

#[derive(Default)]
pub(super) struct Pairing {
    queue: VecDeque<Entry>,
    next_id: u64,
    pub(super) done: Vec<Exchange>,
    pub(super) stats: Http1Stats,
    pub(super) upgraded: bool,
    /// Captured bytes that followed the 101 head in its segment, the uncaptured rest of that
    /// segment, and its timestamp: the first bytes of the new protocol.
    pub(super) after_upgrade: Vec<u8>,
    pub(super) after_upgrade_gap: u64,
    pub(super) after_upgrade_ts: u64,
}

impl Pairing {
    /// Frees the capacity beyond the requests held.
    pub(super) fn shrink(&mut self) {
        self.queue.shrink_to_fit();
        self.done.shrink_to_fit();
        self.after_upgrade.shrink_to_fit();
    }

    /// A request head was parsed (or, with `None`, a request was lost). Returns the id under
    /// which its body and end are reported.
    pub(super) fn begin_request(
        &mut self,
        request: Option<RequestHead>,
        start_ts: u64,
        partial: bool,
    ) -> u64 {
        let waiting = self
            .queue
            .iter()
            .filter(|e| e.answer == Answer::Waiting)
            .count();
        if waiting >= MAX_UNANSWERED
            && let Some(i) = self.queue.iter().position(|e| e.answer == Answer::Waiting)
        {
            self.queue.remove(i);
            self.stats.unanswered_requests_dropped =
                self.stats.unanswered_requests_dropped.saturating_add(1);
            // The dropped entry may have been holding up completed ones behind it.
            self.flush();
        }
        let id = self.next_id;
        self.next_id += 1;
        let method = request
            .as_ref()
            .map_or(MethodKind::Other, |r| MethodKind::of(&r.method));
        self.queue.push_back(Entry {
            id,
            request,
            method,
            req_start: start_ts,
            req_end: start_ts,
            req_body: 0,
            req_done: false,
            req_partial: partial,
            answer: Answer::Waiting,
            response: None,
            resp_start: 0,
            resp_end: 0,
            resp_body: 0,
            resp_partial: false,
        });
        id
    }

    /// The request a final response head arriving now answers, and what its method implies for
    /// the response's framing. None: no request is waiting (the response is dropped).
    pub(super) fn response_target(&self) -> Option<(u64, MethodKind)> {
        self.queue
            .iter()
            .find(|e| e.answer == Answer::Waiting)
            .map(|e| (e.id, e.method))
    }

    pub(super) fn begin_response(
        &mut self,
        id: u64,
        response: ResponseHead,
        start_ts: u64,
        partial: bool,
    ) {
        if let Some(e) = self.entry(id) {
            e.answer = Answer::Active;
            e.response = Some(response);
            e.resp_start = start_ts;
            e.resp_end = start_ts;
            e.resp_partial = partial;
        }
    }

    /// The response of the oldest waiting request was lost (its head fell in a gap).
    pub(super) fn lose_response(&mut self) {
        if let Some(e) = self.queue.iter_mut().find(|e| e.answer == Answer::Waiting) {
            e.answer = Answer::Done;
            e.resp_partial = true;
        }
        self.flush();
    }

    pub(super) fn add_body(&mut self, side: Side, id: Option<u64>, n: u64) {
        if let Some(e) = id.and_then(|id| self.entry(id)) {
            match side {
                Side::Request => e.req_body = e.req_body.saturating_add(n),
                Side::Response => e.resp_body = e.resp_body.saturating_add(n),
            }
        }
    }

    /// The message ended at `ts` (the ts of its last byte); `partial` if its end is a guess.
    pub(super) fn end(&mut self, side: Side, id: Option<u64>, ts: u64, partial: bool) {
        let Some(e) = id.and_then(|id| self.entry(id)) else {
            return;
        };
        match side {
            Side::Request => {
                e.req_done = true;
                e.req_end = ts;
                e.req_partial |= partial;
            }
            Side::Response => {
                e.answer = Answer::Done;
                e.resp_end = ts;
                e.resp_partial |= partial;
            }
        }
        self.flush();
    }

    /// 101 or a successful CONNECT: the response (already begun) ends with its head, and nothing
    /// after it is HTTP/1 any more, so a request body still in progress will never be seen
    /// ending.
    pub(super) fn upgrade(&mut self, id: Option<u64>, ts: u64) {
        self.upgraded = true;
        if let Some(e) = id.and_then(|id| self.entry(id)) {
            e.answer = Answer::Done;
            e.resp_end = ts;
            if !e.req_done {
                e.req_done = true;
                e.req_partial = true;
            }
        }
        self.flush();
    }

    /// Connection closed: everything still open is emitted as it is.
    pub(super) fn close(&mut self) {
        for e in &mut self.queue {
            if !e.req_done {
                e.req_done = true;
                e.req_partial = true;
            }
            if e.answer != Answer::Done {
                e.answer = Answer::Done;
                e.resp_partial = true;
            }
        }
        self.flush();
    }

    /// Counters saturate: a stream can claim more than u64::MAX bytes in gaps.
    pub(super) fn skipped(&mut self, n: u64) {
        self.stats.bytes_skipped = self.stats.bytes_skipped.saturating_add(n);
    }

    fn entry(&mut self, id: u64) -> Option<&mut Entry> {
        self.queue.iter_mut().find(|e| e.id == id)
    }

    fn flush(&mut self) {
        while self
            .queue
            .front()
            .is_some_and(|e| e.req_done && e.answer == Answer::Done)
        {
            let Some(e) = self.queue.pop_front() else {
                break;
            };
            let Some(request) = e.request else { continue };
            let answered = e.response.is_some();
            self.done.push(Exchange {
                request,
                partial: e.req_partial || e.resp_partial || !answered,
                response: e.response,
                request_start_ns: e.req_start,
                request_end_ns: e.req_end,
                response_start_ns: if answered { e.resp_start } else { 0 },
                response_end_ns: if answered { e.resp_end } else { 0 },
                request_body_len: e.req_body,
                response_body_len: if answered { e.resp_body } else { 0 },
            });
        }
    }
}
