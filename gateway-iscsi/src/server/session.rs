//! Full feature phase of one session (one connection): the reader's event loop, one `match`
//! over the PDUs an initiator sends, the tasks of the session and their data-out, task
//! management, pings and logout.
//!
//! A command with data-out first takes its share of the server's data-out budget
//! ([`super::budget`]): at once if it can, otherwise it queues behind the session's other
//! waiting commands while the loop goes on reading, and the loop awaits the grant of the
//! queue's head alongside everything else.
//!
//! Tasks run on a `JoinSet` owned by the loop, so the loop learns of every task's end and a
//! task never outlives its connection. A running task answers only if it wins the race
//! against an abort (its state goes RUNNING -> COMPLETING before it sends; an abort moves it
//! RUNNING -> ABORTED), and an abort waits for the task to end before it answers, so a task
//! management response always follows the responses of the tasks it concerned.

mod command;

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
};

use tokio::{
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    sync::{Notify, mpsc, watch},
    task::JoinSet,
    time::Instant,
};

use super::{
    Server, Volumes,
    budget::Grant,
    connection::{Established, SessionUnit},
    framer::{Framer, ReadError},
    response::{Delivery, residual, task_response},
    transfer::{DataOutCollector, TransferLimits},
    window::{Admission, CmdWindow},
    writer,
};
use crate::{
    login::{LoginComplete, StatusSeq, TextContext, TextExchange},
    pdu::{
        BHS_LEN, DataOut, Itt, LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode,
        Lun, NopIn, NopOut, Pdu, PduError, R2t, Reject, ScsiCommand, TaskMgmtFunction,
        TaskMgmtRequest, TaskMgmtResponse, TaskMgmtResponseCode, TextRequest, Ttt, reject_reason,
    },
    scsi::{Command, Nexus, Outcome, ReservationStore, Sense, Status, cdb},
};

/// Batches of PDUs queued for the writer. Each is one task's answer or one reply; 64 bound
/// the memory of answers waiting on a slow initiator (a batch holds at most one command's
/// data-in).
const WRITER_QUEUE_MAX: usize = 64;

/// A running task's state, for the race between its answer and an abort.
const RUNNING: u8 = 0;
const COMPLETING: u8 = 1;
const ABORTED: u8 = 2;

/// Why the session ends.
type Closed = &'static str;
/// What the loop does next.
type Flow = Result<(), Closed>;

/// A task's slot in the CmdSN window, released when the task ends however it ends.
struct Slot(Arc<Mutex<CmdWindow>>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release();
    }
}

/// What to do with a command once its data is in.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// Run it on the logical unit.
    Execute,
    /// Answer GOOD without running it: a write the initiator gave no whole block for.
    Good,
    /// Answer CHECK CONDITION with this sense.
    Fail(Sense),
}

/// A command and how to answer it.
struct Plan {
    itt: Itt,
    lun: Lun,
    cdb: Vec<u8>,
    action: Action,
    /// Data-In bytes the initiator expects.
    expected_in_len: u32,
    /// Data-Out bytes the initiator may send.
    expected_out_len: u32,
    /// Data-Out bytes the command transfers (its SCSI transfer length), for the residual.
    data_out_len: u32,
    /// Data-Out bytes we keep and pass to the logical unit.
    needed_len: u32,
}

struct Collecting {
    /// Tells this command from a later one that reuses its ITT; the task keeps it.
    id: u64,
    plan: Plan,
    collector: DataOutCollector,
    slot: Option<Slot>,
    immediate: bool,
    /// The command's share of the data-out budget, once granted (none is needed without
    /// data-out).
    grant: Option<Grant>,
}

/// A command waiting for its share of the data-out budget.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    itt: Itt,
    id: u64,
    len_bytes: u32,
}

/// The grant the head of the budget queue waits for.
type Granting = Pin<Box<dyn Future<Output = Grant> + Send>>;

enum Task {
    Collecting(Box<Collecting>),
    Running {
        id: u64,
        state: Arc<AtomicU8>,
        immediate: bool,
    },
}

struct Session<V: Volumes, R: ReservationStore + 'static> {
    server: Arc<Server<V, R>>,
    complete: Box<LoginComplete>,
    lun: Option<SessionUnit<V, R>>,
    window: Arc<Mutex<CmdWindow>>,
    queue: mpsc::Sender<Vec<Pdu>>,
    tasks: HashMap<Itt, Task>,
    running: JoinSet<(Itt, u64)>,
    next_task_id: u64,
    text: TextExchange,
    last_ttt: u32,
    last_activity: Instant,
    /// When an unanswered NOP-In ping expires.
    ping_deadline: Option<Instant>,
    limits: TransferLimits,
    /// The target's reset count (normal sessions) and the count this session reported.
    resets: Option<(Arc<AtomicU64>, u64)>,
    /// Commands waiting for data-out budget, oldest first: each is a task collecting data, so
    /// the command window bounds the queue.
    budget_queue: VecDeque<Waiting>,
    /// The grant the queue's head waits for; none when the queue is empty.
    granting: Option<Granting>,
}

/// Runs the full feature phase of a connection until logout, an error or a close request.
pub(crate) async fn run<V: Volumes, R: ReservationStore + 'static>(
    server: Arc<Server<V, R>>,
    established: Established<V, R>,
    reader: OwnedReadHalf,
    socket_writer: OwnedWriteHalf,
    framer: Framer,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let Established {
        complete,
        config,
        lun,
        handle,
    } = established;
    tracing::info!(%peer, tsih = complete.tsih, initiator = %complete.initiator_name,
        target = complete.target_name.as_deref().unwrap_or("(discovery)"),
        digests = ?complete.params.digests, "login complete");
    let tsih = complete.tsih;
    let window = Arc::new(Mutex::new(CmdWindow::new(
        complete.exp_cmd_sn,
        config.get().cmd_window,
    )));
    let (queue, queue_rx) = mpsc::channel(WRITER_QUEUE_MAX);
    let writer_task = tokio::spawn(writer::run(
        socket_writer,
        queue_rx,
        Arc::clone(&window),
        complete.params.digests,
        complete.next_stat_sn,
        server.config.send_timeout,
    ));
    let mut session = Session::new(server, complete, lun, window, queue);
    let (reason, partial) = session
        .serve(reader, framer, handle.close(), shutdown)
        .await;
    // Tasks in flight finish (a write is never cut short) but do not answer.
    session.abort_all().await.ok();
    drop(session);
    match writer_task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(tsih, %error, "sending stopped"),
        Err(error) => tracing::error!(tsih, %error, "writer task failed"),
    }
    tracing::info!(%peer, tsih, reason, partial, "connection closed");
    drop(handle);
}

/// The grant the budget queue's head waits for. Cancel-safe: the future stays in `granting`
/// (keeping its place in the budget's line) until it resolves; then the caller takes it out.
async fn next_grant(granting: &mut Option<Granting>) -> Grant {
    match granting {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

fn read_error(error: &ReadError) -> Closed {
    match error {
        ReadError::Closed => "closed by the initiator",
        ReadError::Io(_) => "socket read failed",
        ReadError::Pdu(PduError::Disconnect(why)) => {
            tracing::warn!(%why, "dropping the connection");
            "framing error"
        }
        ReadError::Pdu(PduError::Reject { .. }) => "unreadable PDU header",
    }
}

impl<V: Volumes, R: ReservationStore + 'static> Session<V, R> {
    fn new(
        server: Arc<Server<V, R>>,
        complete: Box<LoginComplete>,
        lun: Option<SessionUnit<V, R>>,
        window: Arc<Mutex<CmdWindow>>,
        queue: mpsc::Sender<Vec<Pdu>>,
    ) -> Session<V, R> {
        let resets = complete.target_name.as_deref().map(|target_name| {
            let count = server.reset_count(target_name);
            let seen = count.load(Ordering::Acquire);
            (count, seen)
        });
        let params = &complete.params;
        let limits = TransferLimits {
            first_burst_len: params.first_burst_len,
            max_burst_len: params.max_burst_len,
            max_outstanding_r2t: params.max_outstanding_r2t,
            initial_r2t: params.initial_r2t,
        };
        Session {
            server,
            complete,
            lun,
            window,
            queue,
            tasks: HashMap::new(),
            running: JoinSet::new(),
            next_task_id: 0,
            text: TextExchange::new(),
            last_ttt: 0,
            last_activity: Instant::now(),
            ping_deadline: None,
            limits,
            resets,
            budget_queue: VecDeque::new(),
            granting: None,
        }
    }

    /// The event loop: PDUs, ends of tasks, idle timers and close requests. Returns why it
    /// ended and whether part of a PDU was left unread.
    async fn serve(
        &mut self,
        mut reader: OwnedReadHalf,
        mut framer: Framer,
        close: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> (Closed, bool) {
        let digests = self.complete.params.digests;
        let max_data = self.complete.params.target_max_recv_data_segment_len;
        let reason = loop {
            let deadline = self.read_deadline();
            let read =
                tokio::time::timeout_at(deadline, framer.fill(&mut reader, digests, max_data));
            let flow = tokio::select! {
                read = read => match read {
                    Ok(Ok(len)) => self.on_frame(&mut framer, len).await,
                    Ok(Err(error)) => Err(read_error(&error)),
                    Err(_) => self.on_idle().await,
                },
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    self.on_joined(joined)
                }
                grant = next_grant(&mut self.granting), if self.granting.is_some() => {
                    self.on_grant(grant).await
                }
                () = close.notified() => Err("session reinstated by a new login"),
                _ = shutdown.changed() => Err("server shutting down"),
            };
            if let Err(reason) = flow {
                break reason;
            }
        };
        (reason, !framer.is_empty())
    }

    fn read_deadline(&self) -> Instant {
        self.ping_deadline
            .unwrap_or(self.last_activity + self.server.config.nop_interval)
    }

    /// Decodes the buffered PDU and handles it.
    async fn on_frame(&mut self, framer: &mut Framer, len: usize) -> Flow {
        let params = &self.complete.params;
        let frame = framer.frame(len);
        let mut header = [0u8; BHS_LEN];
        header.copy_from_slice(&frame[..BHS_LEN]);
        let decoded = Pdu::decode(
            frame,
            params.digests,
            params.target_max_recv_data_segment_len,
        );
        framer.consume(len);
        // Anything from the initiator shows it is alive.
        self.last_activity = Instant::now();
        self.ping_deadline = None;
        match decoded {
            Ok(pdu) => self.on_pdu(pdu, &header).await,
            Err(PduError::Reject {
                reason,
                header,
                why,
            }) => {
                tracing::warn!(tsih = self.complete.tsih, %why, "rejecting a PDU");
                self.reject(reason, &header).await?;
                // A command whose own data segment failed is dropped whole (RFC 7143 section
                // 7.8: the initiator retries it); a Data-Out's task has lost its data.
                if reason == reject_reason::DATA_DIGEST_ERROR
                    && let Some((data_out, len)) = DataOut::decode_discarded(&header)
                {
                    return self.on_lost_data_out(data_out, len).await;
                }
                Ok(())
            }
            Err(PduError::Disconnect(why)) => {
                tracing::warn!(tsih = self.complete.tsih, %why, "dropping the connection");
                Err("header digest or framing error")
            }
        }
    }

    /// The one dispatch over the PDUs an initiator sends.
    async fn on_pdu(&mut self, pdu: Pdu, header: &[u8; BHS_LEN]) -> Flow {
        match pdu {
            Pdu::ScsiCommand(command) => self.on_scsi_command(command, header).await,
            Pdu::DataOut(data_out) => self.on_data_out(data_out).await,
            Pdu::NopOut(nop_out) => self.on_nop_out(nop_out).await,
            Pdu::TaskMgmtRequest(request) => self.on_task_mgmt(request, header).await,
            Pdu::TextRequest(request) => self.on_text(request, header).await,
            Pdu::LogoutRequest(request) => self.on_logout(request).await,
            // ErrorRecoveryLevel 0: nothing is kept to resend.
            Pdu::SnackRequest(_) => self.reject(reject_reason::SNACK_REJECT, header).await,
            Pdu::LoginRequest(_)
            | Pdu::NopIn(_)
            | Pdu::ScsiResponse(_)
            | Pdu::TaskMgmtResponse(_)
            | Pdu::LoginResponse(_)
            | Pdu::TextResponse(_)
            | Pdu::DataIn(_)
            | Pdu::LogoutResponse(_)
            | Pdu::R2t(_)
            | Pdu::AsyncMessage(_)
            | Pdu::Reject(_) => self.reject(reject_reason::PROTOCOL_ERROR, header).await,
        }
    }

    async fn send(&mut self, batch: Vec<Pdu>) -> Flow {
        self.queue.send(batch).await.map_err(|_| "sending failed")
    }

    async fn reject(&mut self, reason: u8, header: &[u8; BHS_LEN]) -> Flow {
        let reject = Reject {
            reason,
            header: header.to_vec(),
            ..Reject::default()
        };
        self.send(vec![Pdu::Reject(reject)]).await
    }

    /// Checks the CmdSN of a non-immediate request that is not a SCSI task.
    fn admit_request(&self, immediate: bool, cmd_sn: u32) -> bool {
        if immediate {
            return true;
        }
        let admission = self
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(cmd_sn, false);
        if admission == Admission::Ignore {
            tracing::debug!(
                tsih = self.complete.tsih,
                cmd_sn,
                "CmdSN outside the window"
            );
        }
        admission == Admission::Accept
    }

    fn next_ttt(&mut self) -> Ttt {
        self.last_ttt = self.last_ttt.wrapping_add(1);
        if self.last_ttt == Ttt::RESERVED.0 {
            self.last_ttt = 1;
        }
        Ttt(self.last_ttt)
    }

    /// Silence: ping the initiator, or give up on it.
    async fn on_idle(&mut self) -> Flow {
        if self.ping_deadline.is_some() {
            return Err("no answer to NOP-In");
        }
        let ttt = self.next_ttt();
        self.ping_deadline = Some(Instant::now() + self.server.config.nop_timeout);
        let ping = NopIn {
            lun: Lun(0),
            itt: Itt::RESERVED,
            ttt,
            ..NopIn::default()
        };
        self.send(vec![Pdu::NopIn(ping)]).await
    }

    async fn on_nop_out(&mut self, nop_out: NopOut) -> Flow {
        // The answer to our ping (its TTT), or a NOP-Out that wants no answer.
        if nop_out.ttt != Ttt::RESERVED || nop_out.itt == Itt::RESERVED {
            return Ok(());
        }
        if !self.admit_request(nop_out.immediate, nop_out.cmd_sn) {
            return Ok(());
        }
        let mut data = nop_out.data;
        data.truncate(self.complete.params.initiator_max_recv_data_segment_len as usize);
        let reply = NopIn {
            lun: nop_out.lun,
            itt: nop_out.itt,
            ttt: Ttt::RESERVED,
            data,
            ..NopIn::default()
        };
        self.send(vec![Pdu::NopIn(reply)]).await
    }

    async fn on_text(&mut self, request: TextRequest, header: &[u8; BHS_LEN]) -> Flow {
        if !self.admit_request(request.immediate, request.cmd_sn) {
            return Ok(());
        }
        let config = self.server.login_config();
        let context = TextContext {
            config: &config,
            session_type: self.complete.session_type,
            initiator_name: &self.complete.initiator_name,
            target_name: self.complete.target_name.as_deref(),
            portal: &self.server.config.portal,
            max_send_data_segment_len: self.complete.params.initiator_max_recv_data_segment_len,
        };
        match self
            .text
            .on_request(&request, &context, StatusSeq::default())
        {
            Ok(response) => self.send(vec![Pdu::TextResponse(response)]).await,
            Err(error) => {
                tracing::warn!(tsih = self.complete.tsih, %error, "text request rejected");
                self.reject(error.reject_reason(), header).await
            }
        }
    }

    async fn on_logout(&mut self, request: LogoutRequest) -> Flow {
        if !self.admit_request(request.immediate, request.cmd_sn) {
            return Ok(());
        }
        // Logging out ends the session's tasks; their answers are not sent.
        self.abort_all().await?;
        let response = match request.reason {
            LogoutReason::CloseSession => LogoutResponseCode::Closed,
            LogoutReason::CloseConnection if request.cid == self.complete.cid => {
                LogoutResponseCode::Closed
            }
            LogoutReason::CloseConnection => LogoutResponseCode::CidNotFound,
            LogoutReason::RemoveConnectionForRecovery => LogoutResponseCode::RecoveryNotSupported,
        };
        let params = &self.complete.params;
        let logout = LogoutResponse {
            response,
            itt: request.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            time2wait: params.default_time2wait,
            time2retain: params.default_time2retain,
        };
        self.send(vec![Pdu::LogoutResponse(logout)]).await?;
        if response == LogoutResponseCode::Closed {
            return Err("logout");
        }
        Ok(())
    }

    /// A task ended (its answer is queued, or it was aborted).
    fn on_joined(&mut self, joined: Result<(Itt, u64), tokio::task::JoinError>) -> Flow {
        match joined {
            Ok((itt, id)) => {
                if let Some(Task::Running { id: current, .. }) = self.tasks.get(&itt)
                    && *current == id
                {
                    self.tasks.remove(&itt);
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(tsih = self.complete.tsih, %error, "a task failed");
                Err("task failed")
            }
        }
    }

    /// Waits until none of the running tasks `ids` is left.
    async fn wait_for(&mut self, ids: &[u64]) -> Flow {
        while self.tasks.values().any(|task| match task {
            Task::Running { id, .. } => ids.contains(id),
            Task::Collecting(_) => false,
        }) {
            match self.running.join_next().await {
                Some(joined) => self.on_joined(joined)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Aborts every task of the session: collecting ones are dropped, running ones finish
    /// without answering. Returns when none is left.
    async fn abort_all(&mut self) -> Flow {
        // Every waiting command is a collecting task, dropped below.
        self.budget_queue.clear();
        self.granting = None;
        let mut ids = Vec::new();
        self.tasks.retain(|_, task| match task {
            Task::Collecting(_) => false,
            Task::Running { id, state, .. } => {
                let _ =
                    state.compare_exchange(RUNNING, ABORTED, Ordering::AcqRel, Ordering::Acquire);
                ids.push(*id);
                true
            }
        });
        self.wait_for(&ids).await?;
        // Tasks replaced in the map by a reused ITT were already answering; let them end too.
        while let Some(joined) = self.running.join_next().await {
            self.on_joined(joined)?;
        }
        Ok(())
    }

    /// ABORT TASK: Function Complete if the task was ours to stop, Task Does Not Exist if it
    /// had already answered (or never was).
    async fn abort_task(&mut self, itt: Itt) -> Result<TaskMgmtResponseCode, Closed> {
        match self.tasks.get(&itt) {
            None => Ok(TaskMgmtResponseCode::TaskDoesNotExist),
            Some(Task::Collecting(_)) => {
                if let Some(Task::Collecting(collecting)) = self.tasks.remove(&itt) {
                    self.forget_waiting(collecting.id);
                }
                Ok(TaskMgmtResponseCode::FunctionComplete)
            }
            Some(Task::Running { id, state, .. }) => {
                let id = *id;
                let aborted = state
                    .compare_exchange(RUNNING, ABORTED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                self.wait_for(&[id]).await?;
                Ok(if aborted {
                    TaskMgmtResponseCode::FunctionComplete
                } else {
                    TaskMgmtResponseCode::TaskDoesNotExist
                })
            }
        }
    }

    async fn on_task_mgmt(&mut self, request: TaskMgmtRequest, header: &[u8; BHS_LEN]) -> Flow {
        if self.lun.is_none() {
            return self.reject(reject_reason::PROTOCOL_ERROR, header).await;
        }
        if !self.admit_request(request.immediate, request.cmd_sn) {
            return Ok(());
        }
        let lun_scoped = matches!(
            request.function,
            TaskMgmtFunction::AbortTask
                | TaskMgmtFunction::AbortTaskSet
                | TaskMgmtFunction::ClearTaskSet
                | TaskMgmtFunction::LogicalUnitReset
        );
        let response = if lun_scoped && request.lun != Lun(0) {
            TaskMgmtResponseCode::LunDoesNotExist
        } else {
            match request.function {
                TaskMgmtFunction::AbortTask => self.abort_task(request.referenced_task_tag).await?,
                TaskMgmtFunction::AbortTaskSet | TaskMgmtFunction::ClearTaskSet => {
                    self.abort_all().await?;
                    TaskMgmtResponseCode::FunctionComplete
                }
                TaskMgmtFunction::LogicalUnitReset
                | TaskMgmtFunction::TargetWarmReset
                | TaskMgmtFunction::TargetColdReset => {
                    self.abort_all().await?;
                    // Every session of the logical unit, this one included, reports the
                    // reset as a unit attention (SAM-5 6.3.3). Tasks of other sessions run
                    // on (we hold no cross-session task set).
                    if let Some((count, _)) = &self.resets {
                        count.fetch_add(1, Ordering::AcqRel);
                    }
                    TaskMgmtResponseCode::FunctionComplete
                }
                TaskMgmtFunction::TaskReassign => TaskMgmtResponseCode::ReassignmentNotSupported,
                TaskMgmtFunction::ClearAca | TaskMgmtFunction::Unknown(_) => {
                    TaskMgmtResponseCode::FunctionNotSupported
                }
            }
        };
        tracing::info!(tsih = self.complete.tsih, function = ?request.function, ?response,
            "task management");
        let answer = TaskMgmtResponse {
            response,
            itt: request.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        };
        self.send(vec![Pdu::TaskMgmtResponse(answer)]).await?;
        if request.function == TaskMgmtFunction::TargetColdReset {
            // A cold reset ends the I_T nexus (RFC 7143, Task Management Function Request).
            return Err("target cold reset");
        }
        Ok(())
    }
}
