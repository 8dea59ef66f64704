//! SCSI commands of a session: admission against the CmdSN window, the plan (what data
//! flows which way, what to run), data-out collection with R2Ts, execution on the session's
//! task set, and the answer with its residual.

use super::*;
use crate::scsi::{BlockDevice, Lun as LogicalUnit};

impl<V: Volumes, R: ReservationStore + 'static> Session<V, R> {
    pub(super) async fn on_scsi_command(
        &mut self,
        command: ScsiCommand,
        header: &[u8; BHS_LEN],
    ) -> Flow {
        let Some((lun, _)) = &self.lun else {
            // Discovery sessions carry no SCSI commands (RFC 7143 section 4.3).
            return self.reject(reject_reason::PROTOCOL_ERROR, header).await;
        };
        let lun = Arc::clone(lun);
        if let Err(reason) = self.check_command(&command) {
            return self.reject(reason, header).await;
        }
        let slot = if command.immediate {
            None
        } else {
            let admission = self
                .window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(command.cmd_sn, true);
            if admission == Admission::Ignore {
                tracing::debug!(
                    tsih = self.complete.tsih,
                    cmd_sn = command.cmd_sn,
                    "CmdSN outside the window: command ignored"
                );
                return Ok(());
            }
            Some(Slot(Arc::clone(&self.window)))
        };
        let mut plan = plan(&command, &lun);
        if let Some(sense) = self.unit_attention(command.cdb[0]) {
            plan.action = Action::Fail(sense);
            plan.needed_len = 0;
        }
        let grant = self.try_grant(plan.needed_len);
        let granted = plan.needed_len == 0 || grant.is_some();
        let collector = match DataOutCollector::new(
            self.limits,
            plan.expected_out_len,
            plan.needed_len,
            &command.data,
            command.fin,
            granted,
        ) {
            Ok(collector) => collector,
            Err(error) => {
                tracing::warn!(tsih = self.complete.tsih, itt = command.itt.0, %error,
                    "SCSI command data");
                // Unsolicited Data-Out that may follow finds no task and is dropped.
                return self
                    .answer_failed(&plan, slot, Sense::data_phase_error())
                    .await;
            }
        };
        let id = self.next_task_id;
        self.next_task_id += 1;
        if !granted {
            self.wait_for_budget(Waiting {
                itt: command.itt,
                id,
                len_bytes: plan.needed_len,
            });
        }
        let collecting = Box::new(Collecting {
            id,
            plan,
            collector,
            slot,
            immediate: command.immediate,
            grant,
        });
        self.advance(command.itt, collecting).await
    }

    /// The data-out budget for `len_bytes` at once, unless nothing is needed or commands of
    /// this session already wait (they go first).
    fn try_grant(&self, len_bytes: u32) -> Option<Grant> {
        if len_bytes == 0 || !self.budget_queue.is_empty() {
            return None;
        }
        self.server.data_out_budget.try_grant(len_bytes)
    }

    /// Queues a command for its data-out budget; the loop awaits the head's grant.
    fn wait_for_budget(&mut self, waiting: Waiting) {
        tracing::debug!(
            tsih = self.complete.tsih,
            itt = waiting.itt.0,
            len_bytes = waiting.len_bytes,
            "waiting for data-out budget"
        );
        // Each queued command is a task collecting data: the window and the immediate
        // command limit bound them.
        assert!(self.budget_queue.len() <= self.tasks.len());
        self.server.data_out_budget.count_wait();
        self.budget_queue.push_back(waiting);
        self.request_grant();
    }

    /// Starts waiting for the grant of the queue's head, unless already waiting.
    fn request_grant(&mut self) {
        if self.granting.is_some() {
            return;
        }
        if let Some(head) = self.budget_queue.front() {
            self.granting = Some(Box::pin(self.server.data_out_budget.grant(head.len_bytes)));
        }
    }

    /// The queue's head got its grant: its R2Ts go out (or it starts), and the next command
    /// in the queue waits for its own.
    pub(super) async fn on_grant(&mut self, grant: Grant) -> Flow {
        self.granting = None;
        let waiting = self
            .budget_queue
            .pop_front()
            .expect("invariant: a grant answers the queue's head");
        assert_eq!(grant.len_bytes(), waiting.len_bytes);
        self.request_grant();
        let current = matches!(
            self.tasks.get(&waiting.itt),
            Some(Task::Collecting(collecting)) if collecting.id == waiting.id
        );
        // A command that went meanwhile (aborted, failed) leaves the queue when it goes.
        assert!(current, "a command left the budget queue behind");
        let Some(Task::Collecting(mut collecting)) = self.tasks.remove(&waiting.itt) else {
            unreachable!("checked above");
        };
        collecting.collector.grant();
        collecting.grant = Some(grant);
        self.advance(waiting.itt, collecting).await
    }

    /// Takes a command that goes away (aborted or failed while collecting) out of the budget
    /// queue; if it was the head, the next one waits for its grant instead.
    pub(super) fn forget_waiting(&mut self, id: u64) {
        let Some(index) = self.budget_queue.iter().position(|w| w.id == id) else {
            return;
        };
        self.budget_queue.remove(index);
        if index == 0 {
            // Dropping the wait gives back any bytes set aside for it.
            self.granting = None;
            self.request_grant();
        }
    }

    /// The reason to reject a command before it takes a CmdSN: immediate data not
    /// negotiated, too many immediate commands, or an ITT still in use.
    fn check_command(&self, command: &ScsiCommand) -> Result<(), u8> {
        if !command.data.is_empty() && !self.complete.params.immediate_data {
            return Err(reject_reason::PROTOCOL_ERROR);
        }
        if command.immediate && self.immediate_tasks() >= self.server.config.immediate_commands_max
        {
            return Err(reject_reason::IMMEDIATE_COMMAND_REJECT);
        }
        match self.tasks.get(&command.itt) {
            // The task answered (or was aborted) and the initiator reused its ITT before
            // the task's end reached the loop.
            Some(Task::Running { state, .. }) if state.load(Ordering::Acquire) != RUNNING => Ok(()),
            Some(_) => {
                tracing::warn!(tsih = self.complete.tsih, itt = command.itt.0, "ITT in use");
                Err(reject_reason::TASK_IN_PROGRESS)
            }
            None => Ok(()),
        }
    }

    pub(super) async fn on_data_out(&mut self, data_out: DataOut) -> Flow {
        let itt = data_out.itt;
        let Some(Task::Collecting(collecting)) = self.tasks.get_mut(&itt) else {
            // Data of a task that was aborted or failed may still be on its way.
            tracing::debug!(
                tsih = self.complete.tsih,
                itt = itt.0,
                "Data-Out for no task"
            );
            return Ok(());
        };
        if let Err(error) = collecting.collector.on_data_out(&data_out) {
            // The header is sound, so the connection is: only this task fails, and the rest
            // of its data is dropped as it arrives.
            tracing::warn!(tsih = self.complete.tsih, itt = itt.0, %error, "Data-Out");
            return self.fail_collecting(itt, Sense::data_phase_error()).await;
        }
        let collector = &collecting.collector;
        if collector.is_lost() {
            return self.fail_when_drained(itt).await;
        }
        // A command waiting for its budget moves on when the grant comes.
        if !collector.wants_r2t() && !collector.is_ready() {
            return Ok(());
        }
        let Some(Task::Collecting(collecting)) = self.tasks.remove(&itt) else {
            unreachable!("the task was collecting above");
        };
        self.advance(itt, collecting).await
    }

    /// A Data-Out whose data failed its digest (RFC 7143 section 7.8). At ErrorRecoveryLevel 0
    /// nothing is asked again, so the task's data is lost: it gives its buffer and budget back
    /// and sends no more R2Ts, and fails with PROTOCOL SERVICE CRC ERROR once the sequences
    /// under way have ended, so that none of its data arrives after its answer.
    pub(super) async fn on_lost_data_out(&mut self, header: DataOut, len: u32) -> Flow {
        let itt = header.itt;
        let Some(Task::Collecting(collecting)) = self.tasks.get_mut(&itt) else {
            tracing::debug!(
                tsih = self.complete.tsih,
                itt = itt.0,
                "lost Data-Out for no task"
            );
            return Ok(());
        };
        if let Err(error) = collecting.collector.on_lost_data_out(&header, len) {
            tracing::warn!(tsih = self.complete.tsih, itt = itt.0, %error, "lost Data-Out");
            return self.fail_collecting(itt, Sense::data_phase_error()).await;
        }
        collecting.grant = None;
        let id = collecting.id;
        self.forget_waiting(id);
        self.fail_when_drained(itt).await
    }

    /// Fails a task whose data is lost once no sequence of it is under way.
    async fn fail_when_drained(&mut self, itt: Itt) -> Flow {
        let drained = match self.tasks.get(&itt) {
            Some(Task::Collecting(collecting)) => {
                assert!(collecting.collector.is_lost());
                collecting.collector.is_drained()
            }
            _ => false,
        };
        if !drained {
            return Ok(());
        }
        self.fail_collecting(itt, Sense::protocol_service_crc_error())
            .await
    }

    /// Sends the R2Ts the task wants and starts it once its data is in.
    async fn advance(&mut self, itt: Itt, mut collecting: Box<Collecting>) -> Flow {
        let mut r2ts = Vec::new();
        while collecting.collector.wants_r2t() {
            let ttt = self.next_ttt();
            let r2t = collecting.collector.issue_r2t(ttt);
            r2ts.push(Pdu::R2t(R2t {
                lun: collecting.plan.lun,
                itt,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                r2t_sn: r2t.r2t_sn,
                buffer_offset: r2t.offset,
                desired_len: r2t.len,
            }));
        }
        if collecting.collector.is_ready() {
            assert!(r2ts.is_empty());
            self.start(itt, *collecting);
        } else {
            self.tasks.insert(itt, Task::Collecting(collecting));
        }
        if r2ts.is_empty() {
            return Ok(());
        }
        self.send(r2ts).await
    }

    /// Runs a task whose data is in on the session's task set.
    fn start(&mut self, itt: Itt, collecting: Collecting) {
        let Collecting {
            id,
            plan,
            collector,
            slot,
            immediate,
            grant,
        } = collecting;
        let data = DataOutBuffer {
            bytes: collector.into_data(),
            grant,
        };
        let (lun, nexus) = self
            .lun
            .clone()
            .expect("invariant: commands run in normal sessions only");
        let state = Arc::new(AtomicU8::new(RUNNING));
        let delivery = self.delivery(&plan);
        let queue = self.queue.clone();
        let task_state = Arc::clone(&state);
        self.running.spawn(async move {
            execute(&lun, &nexus, &plan, data, delivery, task_state, slot, queue).await;
            (itt, id)
        });
        self.tasks.insert(
            itt,
            Task::Running {
                id,
                state,
                immediate,
            },
        );
    }

    /// Answers a task still collecting data with `sense` and forgets it (its remaining
    /// Data-Out PDUs are ignored).
    pub(super) async fn fail_collecting(&mut self, itt: Itt, sense: Sense) -> Flow {
        if !matches!(self.tasks.get(&itt), Some(Task::Collecting(_))) {
            return Ok(());
        }
        let Some(Task::Collecting(collecting)) = self.tasks.remove(&itt) else {
            unreachable!("checked above");
        };
        self.forget_waiting(collecting.id);
        let Collecting { plan, slot, .. } = *collecting;
        self.answer_failed(&plan, slot, sense).await
    }

    /// Answers a command that will not run with CHECK CONDITION and `sense`.
    async fn answer_failed(&mut self, plan: &Plan, slot: Option<Slot>, sense: Sense) -> Flow {
        let outcome = Outcome {
            status: Status::CheckCondition,
            sense: Some(sense),
            data_in: Vec::new(),
        };
        let pdus = task_response(
            &outcome,
            residual(0, plan.expected_out_len),
            &self.delivery(plan),
        );
        drop(slot);
        self.send(pdus).await
    }

    fn delivery(&self, plan: &Plan) -> Delivery {
        let params = &self.complete.params;
        Delivery {
            itt: plan.itt,
            lun: plan.lun,
            expected_in_len: plan.expected_in_len,
            segment_len_max: params.initiator_max_recv_data_segment_len,
            max_burst_len: params.max_burst_len,
        }
    }

    /// The reset unit attention, once per reset, for any command but INQUIRY, REPORT LUNS
    /// and REQUEST SENSE (SAM-5 5.14).
    fn unit_attention(&mut self, opcode: u8) -> Option<Sense> {
        let exempt = [
            cdb::opcode::INQUIRY,
            cdb::opcode::REPORT_LUNS,
            cdb::opcode::REQUEST_SENSE,
        ];
        let (count, seen) = self.resets.as_mut()?;
        let current = count.load(Ordering::Acquire);
        if current == *seen || exempt.contains(&opcode) {
            return None;
        }
        *seen = current;
        Some(Sense::reset_occurred())
    }

    fn immediate_tasks(&self) -> u32 {
        let count = self
            .tasks
            .values()
            .filter(|task| match task {
                Task::Collecting(collecting) => collecting.immediate,
                Task::Running { immediate, .. } => *immediate,
            })
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }
}

/// Decides what a command transfers and what to run.
fn plan<D: BlockDevice, S: ReservationStore>(
    command: &ScsiCommand,
    lun: &LogicalUnit<D, S>,
) -> Plan {
    let expected_out_len = if command.write {
        command.expected_data_len
    } else {
        0
    };
    let expected_in_len = match (command.read, command.write) {
        (true, false) => command.expected_data_len,
        (true, true) => command.bidi_read_len.unwrap_or(0),
        (false, _) => 0,
    };
    let mut plan = Plan {
        itt: command.itt,
        lun: command.lun,
        cdb: command.full_cdb(),
        action: Action::Execute,
        expected_in_len,
        expected_out_len,
        data_out_len: 0,
        needed_len: 0,
    };
    // LUN 0 is the only logical unit; REPORT LUNS may be sent to any.
    if command.lun != Lun(0) && command.cdb[0] != cdb::opcode::REPORT_LUNS {
        plan.action = Action::Fail(Sense::logical_unit_not_supported());
        return plan;
    }
    let prepared = match lun.prepare(&plan.cdb) {
        Ok(prepared) => prepared,
        Err(sense) => {
            plan.action = Action::Fail(sense);
            return plan;
        }
    };
    plan.data_out_len = prepared.data_out_len;
    // COMPARE AND WRITE and WRITE SAME take exactly their data: any other expected length
    // is the initiator's mistake (SBC-4 5.3, 5.49), answered as the length field's.
    if let Command::CompareAndWrite(range)
    | Command::WriteSame {
        range,
        no_data_out: false,
        ..
    } = prepared.command
        && expected_out_len != prepared.data_out_len
    {
        plan.action = Action::Fail(Sense::invalid_field_in_cdb(range.length_field, None));
        return plan;
    }
    plan.needed_len = prepared.data_out_len.min(expected_out_len);
    if plan.needed_len == prepared.data_out_len {
        return plan;
    }
    // The initiator sends less than the CDB asks. A write then writes only the whole
    // blocks it sends (what other targets do, and what iSCSIResiduals checks); other
    // commands fail in the logical unit for lack of data.
    let Some((shortened, blocks)) = shortened_write(
        &prepared.command,
        &plan.cdb,
        expected_out_len,
        lun.block_size(),
    ) else {
        return plan;
    };
    if blocks == 0 {
        plan.action = Action::Good;
        plan.needed_len = 0;
        return plan;
    }
    if let Ok(shortened_prepared) = lun.prepare(&shortened)
        && shortened_prepared.data_out_len == blocks * lun.block_size()
    {
        plan.cdb = shortened;
        plan.needed_len = shortened_prepared.data_out_len;
    }
    plan
}

/// For a WRITE or WRITE AND VERIFY whose expected length covers fewer bytes than its CDB
/// asks: the CDB rewritten to the whole blocks the initiator sends, and that block count.
fn shortened_write(
    command: &Command,
    cdb_bytes: &[u8],
    expected_out_len: u32,
    block_size: u32,
) -> Option<(Vec<u8>, u32)> {
    let range = match *command {
        Command::Write(range) | Command::WriteAndVerify { range, .. } => range,
        _ => return None,
    };
    let blocks = expected_out_len / block_size;
    assert!(blocks < range.blocks);
    let width = match cdb::cdb_length(*cdb_bytes.first()?)? {
        6 => 1,
        10 => 2,
        _ => 4,
    };
    let at = usize::from(range.length_field);
    let mut shortened = cdb_bytes.to_vec();
    shortened
        .get_mut(at..at + width)?
        .copy_from_slice(&blocks.to_be_bytes()[4 - width..]);
    Some((shortened, blocks))
}

/// A task's data-out and the budget it holds: both go once the logical unit has the data.
struct DataOutBuffer {
    bytes: Vec<u8>,
    grant: Option<Grant>,
}

/// Runs one task and queues its answer unless it was aborted meanwhile.
#[allow(clippy::too_many_arguments)]
async fn execute<D: BlockDevice, S: ReservationStore>(
    lun: &LogicalUnit<D, S>,
    nexus: &Nexus,
    plan: &Plan,
    data: DataOutBuffer,
    delivery: Delivery,
    state: Arc<AtomicU8>,
    slot: Option<Slot>,
    queue: mpsc::Sender<Vec<Pdu>>,
) {
    if let Some(grant) = &data.grant {
        assert_eq!(grant.len_bytes() as usize, data.bytes.len());
    }
    let outcome = match plan.action {
        Action::Execute => lun.execute(nexus, &plan.cdb, &data.bytes).await,
        Action::Good => Outcome {
            status: Status::Good,
            sense: None,
            data_in: Vec::new(),
        },
        Action::Fail(sense) => Outcome {
            status: Status::CheckCondition,
            sense: Some(sense),
            data_in: Vec::new(),
        },
    };
    // The logical unit is done with the data: its buffer and budget go before the answer.
    drop(data);
    // Data flowed out if the command takes data-out or the initiator offered some.
    let residual =
        if plan.data_out_len > 0 || (plan.expected_out_len > 0 && plan.expected_in_len == 0) {
            residual(plan.data_out_len, plan.expected_out_len)
        } else {
            let data_in_len = u32::try_from(outcome.data_in.len()).unwrap_or(u32::MAX);
            residual(data_in_len, plan.expected_in_len)
        };
    let pdus = task_response(&outcome, residual, &delivery);
    let answer = state
        .compare_exchange(RUNNING, COMPLETING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    // Free the window slot first: the answer's MaxCmdSN then shows it.
    drop(slot);
    if answer {
        // A closed queue means the connection is going away; nobody waits for the answer.
        let _ = queue.send(pdus).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::BlockRange;

    #[test]
    fn shortened_writes_keep_whole_blocks() {
        let range = BlockRange {
            lba: 0,
            blocks: 2,
            length_field: 7,
        };
        let write10 = [0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0];
        let (cdb, blocks) =
            shortened_write(&Command::Write(range), &write10, 700, 512).expect("a WRITE (10)");
        assert_eq!(blocks, 1);
        assert_eq!(&cdb[7..9], &[0, 1]);
        let write16_range = BlockRange {
            length_field: 10,
            ..range
        };
        let mut write16 = [0u8; 16];
        write16[0] = 0x8A;
        write16[13] = 2;
        let (cdb, blocks) = shortened_write(&Command::Write(write16_range), &write16, 100, 512)
            .expect("a WRITE (16)");
        assert_eq!(blocks, 0);
        assert_eq!(&cdb[10..14], &[0, 0, 0, 0]);
        assert!(shortened_write(&Command::TestUnitReady, &[0u8; 6], 0, 512).is_none());
    }
}
