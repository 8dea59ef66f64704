//! The CmdSN window of a session (RFC 7143 section 4.2.2.1), sans IO.
//!
//! The target advertises ExpCmdSN and MaxCmdSN in every response. We count SCSI tasks in
//! flight against the window: MaxCmdSN = ExpCmdSN + (window - in flight) - 1, so an initiator
//! never has more than `window` tasks outstanding and a full window closes (MaxCmdSN =
//! ExpCmdSN - 1). Admitting a task moves ExpCmdSN and the in-flight count up together and
//! finishing one moves the count down, so the advertised MaxCmdSN never decreases.

/// Whether `a` precedes `b` in 32-bit serial number arithmetic (RFC 1982).
pub(crate) fn sn_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// What to do with a non-immediate PDU's CmdSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Inside the window: process it.
    Accept,
    /// Below ExpCmdSN (a duplicate) or above MaxCmdSN: RFC 7143 says to ignore it silently.
    Ignore,
}

/// ExpCmdSN, MaxCmdSN and the tasks in flight of one session.
#[derive(Clone, Debug)]
pub(crate) struct CmdWindow {
    exp_cmd_sn: u32,
    /// Tasks the session may have in flight; from the login configuration.
    window: u32,
    in_flight: u32,
}

impl CmdWindow {
    /// The window at the end of login: ExpCmdSN is the login's CmdSN.
    pub(crate) fn new(exp_cmd_sn: u32, window: u32) -> CmdWindow {
        assert!(window >= 1);
        assert!(window <= crate::login::config::CMD_WINDOW_MAX);
        CmdWindow {
            exp_cmd_sn,
            window,
            in_flight: 0,
        }
    }

    /// ExpCmdSN: the next CmdSN we expect.
    pub(crate) fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// MaxCmdSN: the last CmdSN the initiator may send now.
    pub(crate) fn max_cmd_sn(&self) -> u32 {
        assert!(self.in_flight <= self.window);
        self.exp_cmd_sn
            .wrapping_add(self.window - self.in_flight)
            .wrapping_sub(1)
    }

    /// Checks the CmdSN of a non-immediate PDU. Accepted PDUs move ExpCmdSN past them; a
    /// `task` also takes a slot until [`CmdWindow::release`]. A CmdSN inside the window but
    /// ahead of ExpCmdSN can only follow a PDU we discarded (a command with a data digest
    /// error): with one connection per session it will never be filled, so we move on.
    pub(crate) fn admit(&mut self, cmd_sn: u32, task: bool) -> Admission {
        let max_cmd_sn = self.max_cmd_sn();
        if sn_lt(cmd_sn, self.exp_cmd_sn) || sn_lt(max_cmd_sn, cmd_sn) {
            return Admission::Ignore;
        }
        self.exp_cmd_sn = cmd_sn.wrapping_add(1);
        if task {
            // A full window has MaxCmdSN = ExpCmdSN - 1, so nothing was inside it.
            assert!(self.in_flight < self.window);
            self.in_flight += 1;
        }
        let max_after = self.max_cmd_sn();
        assert!(!sn_lt(max_after, max_cmd_sn));
        Admission::Accept
    }

    /// Frees the slot of a task that finished or was aborted.
    pub(crate) fn release(&mut self) {
        assert!(self.in_flight > 0);
        self.in_flight -= 1;
    }

    /// Tasks holding a slot.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(1, 2));
        assert!(!sn_lt(2, 1));
        assert!(!sn_lt(5, 5));
        assert!(sn_lt(u32::MAX, 0));
        assert!(sn_lt(u32::MAX - 10, 3));
        assert!(!sn_lt(3, u32::MAX - 10));
    }

    /// Fills the window, sees it close, releases a slot and sees it reopen by one; checks
    /// that out-of-window CmdSNs are ignored and that MaxCmdSN never goes down.
    #[test]
    fn window_closes_and_reopens() {
        let mut window = CmdWindow::new(u32::MAX - 1, 3);
        assert_eq!(window.max_cmd_sn(), 0);
        assert_eq!(window.admit(u32::MAX - 2, true), Admission::Ignore);
        assert_eq!(window.admit(1, true), Admission::Ignore);
        for cmd_sn in [u32::MAX - 1, u32::MAX, 0] {
            assert_eq!(window.admit(cmd_sn, true), Admission::Accept);
            assert_eq!(window.max_cmd_sn(), 0);
        }
        assert_eq!(window.in_flight(), 3);
        assert_eq!(window.exp_cmd_sn(), 1);
        // Closed: MaxCmdSN = ExpCmdSN - 1.
        assert_eq!(window.admit(1, true), Admission::Ignore);
        window.release();
        assert_eq!(window.max_cmd_sn(), 1);
        assert_eq!(window.admit(1, false), Admission::Accept);
        assert_eq!(window.max_cmd_sn(), 2);
    }

    #[test]
    fn a_gap_inside_the_window_is_skipped() {
        let mut window = CmdWindow::new(10, 8);
        assert_eq!(window.admit(12, true), Admission::Accept);
        assert_eq!(window.exp_cmd_sn(), 13);
        assert_eq!(window.max_cmd_sn(), 19);
        assert_eq!(window.admit(11, true), Admission::Ignore);
    }
}
