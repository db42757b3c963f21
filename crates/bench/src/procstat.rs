//! Process figures: the server's memory and CPU from /proc, the generator's own CPU from
//! getrusage, and the file-descriptor limit.

/// A sample of a process's memory (KiB) and CPU time (seconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_s: f64,
}

/// Reads /proc/PID/status (VmRSS, VmHWM) and /proc/PID/stat (utime + stime).
pub fn sample(pid: u32) -> Result<ProcSample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let mut s = ProcSample::default();
    for line in status.lines() {
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            s.rss_kib = kib();
        } else if line.starts_with("VmHWM:") {
            s.hwm_kib = kib();
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    s.cpu_s = (ticks(11) + ticks(12)) as f64 / hz;
    Ok(s)
}

/// Samples every server process given (`--server-pid`, repeatable), in order.
pub fn sample_all(pids: &[u32]) -> Result<Vec<ProcSample>, String> {
    pids.iter().map(|&p| sample(p)).collect()
}

/// The sum of several processes' samples (None for none), so that a server made of several
/// processes (a cluster's nodes and its NATS server) reads like one. The peak RSS is the sum of
/// each process's own peak: an upper bound of their peak together.
pub fn total(samples: &[ProcSample]) -> Option<ProcSample> {
    if samples.is_empty() {
        return None;
    }
    Some(
        samples
            .iter()
            .fold(ProcSample::default(), |a, s| ProcSample {
                rss_kib: a.rss_kib + s.rss_kib,
                hwm_kib: a.hwm_kib + s.hwm_kib,
                cpu_s: a.cpu_s + s.cpu_s,
            }),
    )
}

/// Optional server sampling: None when no --server-pid was given; the sum when several were.
pub fn sample_opt(pids: &[u32]) -> Result<Option<ProcSample>, String> {
    Ok(total(&sample_all(pids)?))
}

/// CPU seconds (user + system) used by this process so far.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we pass; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        rl.rlim_cur
    }
}
