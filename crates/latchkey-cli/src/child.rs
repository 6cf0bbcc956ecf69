//! The process runner behind `lk run -- CMD ARGS...`: starts a program with an environment the
//! caller has already filled with secrets, hides those secret values from its stdout and stderr,
//! forwards signals to it and returns the exit code `lk` should exit with.
//!
//! The program is executed directly (no shell): `args` reach it verbatim.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use zeroize::{Zeroize, Zeroizing};

/// Text that replaces every occurrence of a secret in the child's output.
pub const MASK: &str = "***";

/// Bytes read from the child's stdout or stderr per read call.
const CHUNK: usize = 64 * 1024;

/// Program, arguments, environment and secrets for one `lk run`.
///
/// Contains secrets (in `env` and `masks`), so it has no `Debug`. On drop the env values are
/// overwritten, and the `masks` zeroize themselves.
pub struct ChildSpec {
    /// A name looked up in the `PATH` entry of `env` (not in `lk`'s own `PATH`), or a path.
    pub program: OsString,
    /// Passed verbatim, no shell involved.
    pub args: Vec<OsString>,
    /// The COMPLETE environment: the inherited one is cleared first, so the child gets exactly
    /// these entries.
    pub env: Vec<(OsString, OsString)>,
    /// Secret values to hide from the child's stdout and stderr (see [`Masker`]).
    pub masks: Vec<Zeroizing<Vec<u8>>>,
    /// With `false` (`--no-masking`) the child inherits `lk`'s stdout and stderr directly and
    /// can detect a terminal. With `true` both go through pipes and a [`Masker`], so most
    /// programs switch to block buffering and drop colours.
    pub masking: bool,
}

impl Drop for ChildSpec {
    fn drop(&mut self) {
        for (_, value) in &mut self.env {
            std::mem::take(value).into_vec().zeroize();
        }
    }
}

/// Failure to start or supervise the child. Once the child has started, its own failures show in
/// its exit code instead.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("command `{program}` not found: check the name or PATH")]
    NotFound { program: String },
    #[error(
        "command `{program}` is not executable: check its permissions (chmod +x) or run it through its interpreter"
    )]
    PermissionDenied { program: String },
    #[error(
        "cannot start command `{program}`: {source}; check that it is a program this system can run"
    )]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot listen for signal `{signal}` to forward it to the command: {source}; run the command without `lk run`"
    )]
    Signals {
        signal: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "lost track of command `{program}` while waiting for it: {source}; check whether it is still running"
    )]
    Wait {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// Runs the child with `lk`'s own stdout and stderr as destinations; see [`run_child_with`].
pub async fn run_child(spec: ChildSpec) -> Result<i32, ChildError> {
    run_child_with(spec, tokio::io::stdout(), tokio::io::stderr()).await
}

/// Runs `spec.program` and returns the exit code for `lk`: the child's own, or 128+N when signal
/// N killed it.
///
/// The child's stdout and stderr are masked and copied to `stdout` and `stderr`, flushed after
/// every chunk. Both writers stay unused when `spec.masking` is false. stdin is inherited.
/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 received by this process are forwarded
/// to the child, except SIGINT and SIGQUIT the keyboard already sent it (`should_forward`
/// explains). Their listeners are installed before the child starts and stay for the rest of the
/// process, because tokio never unregisters a signal handler. From then on those signals no
/// longer terminate `lk` by default.
///
/// After the child exits, its pipes are drained to EOF so no trailing output is lost. A process
/// it left behind that keeps them open delays the return until it closes them. SIGINT, SIGTERM,
/// SIGHUP or SIGQUIT received meanwhile stop the draining, and data still held by the masker is
/// then dropped unprinted. If writing to `stdout` or `stderr` fails (a closed pipe, say), copying
/// that stream stops and its pipe is closed. The child then gets the same broken pipe it would
/// get without `lk`.
///
/// Dropping the returned future before it completes kills the child (SIGKILL).
pub async fn run_child_with<O, E>(spec: ChildSpec, stdout: O, stderr: E) -> Result<i32, ChildError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let signals = SignalSource::Process(ProcessSignals::install()?);
    run_with_signals(spec, stdout, stderr, signals).await
}

/// Runs like [`run_child_with`], but takes the signals to forward from `signals`.
async fn run_with_signals<O, E>(
    spec: ChildSpec,
    mut stdout: O,
    mut stderr: E,
    mut signals: SignalSource,
) -> Result<i32, ChildError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let program_name = || spec.program.to_string_lossy().into_owned();
    let output = || {
        if spec.masking {
            Stdio::piped()
        } else {
            Stdio::inherit()
        }
    };
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::inherit())
        .stdout(output())
        .stderr(output())
        .kill_on_drop(true);
    let spawned = command.spawn();
    // NOTE: the command keeps its own copy of the environment, secrets included. Dropping it
    // frees that copy but does not overwrite it.
    drop(command);
    let mut child = spawned.map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ChildError::NotFound {
            program: program_name(),
        },
        io::ErrorKind::PermissionDenied => ChildError::PermissionDenied {
            program: program_name(),
        },
        _ => ChildError::Spawn {
            program: program_name(),
            source,
        },
    })?;
    // `id` is `None` only once `wait` below has reaped the child. Until then the pid cannot be
    // reused, so signalling it never hits another process.
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);

    let child_out = child.stdout.take();
    let child_err = child.stderr.take();
    let mut pumps = pin!(async {
        tokio::join!(
            pump(child_out, &spec.masks, &mut stdout),
            pump(child_err, &spec.masks, &mut stderr),
        )
    });
    let mut pumps_done = false;

    let status: io::Result<ExitStatus> = loop {
        tokio::select! {
            status = child.wait() => break status,
            ((), ()) = &mut pumps, if !pumps_done => pumps_done = true,
            Some(sig) = signals.recv() => {
                if let Some(pid) = pid
                    && should_forward(sig, child_in_terminal_foreground(pid))
                {
                    // ESRCH means the child already exited, and `wait` is about to report it.
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
        }
    };
    let status = status.map_err(|source| ChildError::Wait {
        program: program_name(),
        source,
    })?;

    while !pumps_done {
        tokio::select! {
            ((), ()) = &mut pumps => pumps_done = true,
            Some(sig) = signals.recv() => {
                if stops_draining(sig) {
                    break;
                }
            }
        }
    }
    Ok(exit_code(status))
}

/// Converts the child's `status` into the code `lk` exits with.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        // Neither exited nor killed. `wait` does not report stopped children, so this is
        // unreachable in practice and gets a generic failure code.
        (None, None) => 1,
    }
}

/// Returns whether a signal received after the child exited stops the draining of its pipes.
fn stops_draining(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT
    )
}

/// Returns whether to pass `sig`, received by `lk`, on to the child.
///
/// NOTE: Ctrl-C and Ctrl-\ on a terminal send SIGINT and SIGQUIT to the terminal's whole
/// foreground process group. The child starts in `lk`'s process group. When that group (or any
/// group the child moved itself to) is the terminal's foreground group, the keyboard's signal
/// already reached the child. Forwarding it as well would deliver it twice, and many programs
/// treat a second SIGINT as "abort now, skip cleanup". So SIGINT and SIGQUIT are not forwarded
/// while the child's process group is the foreground group of its controlling terminal.
/// The cost is that a SIGINT or SIGQUIT sent by another process to `lk` alone
/// (`kill -INT <pid of lk>`) at such a time is not passed on. The check cannot tell who sent the
/// signal, only whether the keyboard could have reached the child. With no terminal involved
/// (scripts, service managers, CI) both are always forwarded.
/// SIGTERM, SIGUSR1 and SIGUSR2 never come from the keyboard and are always forwarded. A terminal
/// hangup may also send SIGHUP to the child directly. It is forwarded anyway, because a duplicate
/// hangup is harmless to most programs, while a missing one leaves the child running.
/// Ctrl-Z (SIGTSTP) and the later SIGCONT are not handled here. They stop and resume `lk` and the
/// child together because both are in the same process group.
fn should_forward(sig: Signal, child_in_foreground: bool) -> bool {
    match sig {
        Signal::SIGINT | Signal::SIGQUIT => !child_in_foreground,
        _ => true,
    }
}

/// Returns whether the process group of `pid` is the foreground process group of its
/// controlling terminal, and `false` when it has no terminal or `/proc` cannot tell.
#[cfg(target_os = "linux")]
fn child_in_terminal_foreground(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| foreground_from_stat(&stat))
        .unwrap_or(false)
}

/// Guesses whether the keyboard's signals reach the child: without `/proc` (or nix's `term`
/// feature for `tcgetpgrp`), the best available sign is that `lk`'s stdin is a terminal.
#[cfg(not(target_os = "linux"))]
fn child_in_terminal_foreground(_pid: Pid) -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal()
}

/// Reads a `/proc/PID/stat` line: `Some(true)` when the process group (field 5) is the
/// foreground process group of the controlling terminal (field 8, -1 without a terminal).
/// `None` when the line cannot be parsed.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn foreground_from_stat(stat: &str) -> Option<bool> {
    // Field 2 is the command name in parentheses and may itself contain spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace();
    // state, ppid, pgrp, session, tty_nr, tpgid
    let pgrp: i32 = fields.nth(2)?.parse().ok()?;
    let tpgid: i32 = fields.nth(2)?.parse().ok()?;
    Some(tpgid > 0 && tpgid == pgrp)
}

/// Copies `reader` to `writer` through a fresh [`Masker`] until EOF, flushing after every chunk.
/// Stops early (dropping `reader`, which closes the pipe) when writing fails.
async fn pump<R, W>(reader: Option<R>, masks: &[Zeroizing<Vec<u8>>], writer: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(mut reader) = reader else {
        return;
    };
    let mut masker = Masker::new(masks);
    let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        let n = match reader.read(&mut buf[..]).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A read error is treated like EOF because nothing more can come from that pipe.
            Err(_) => break,
        };
        let safe = masker.feed(&buf[..n]);
        if write_flush(writer, &safe).await.is_err() {
            return;
        }
    }
    let rest = masker.finish();
    // If this last write fails the output is lost, and no caller remains to report it to.
    let _ = write_flush(writer, &rest).await;
}

async fn write_flush<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    if !bytes.is_empty() {
        writer.write_all(bytes).await?;
    }
    writer.flush().await
}

/// Source of the signals to forward.
enum SignalSource {
    Process(ProcessSignals),
    #[cfg(test)]
    Channel(tokio::sync::mpsc::UnboundedReceiver<Signal>),
}

impl SignalSource {
    /// Waits for the next signal to consider forwarding. Returns `None` when no more can arrive.
    async fn recv(&mut self) -> Option<Signal> {
        match self {
            SignalSource::Process(signals) => signals.recv().await,
            #[cfg(test)]
            SignalSource::Channel(rx) => rx.recv().await,
        }
    }
}

/// Listeners for the signals `lk` forwards, received by this process.
struct ProcessSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl ProcessSignals {
    fn install() -> Result<Self, ChildError> {
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| ChildError::Signals {
                signal: name,
                source,
            })
        };
        Ok(ProcessSignals {
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
            quit: listen(SignalKind::quit(), "SIGQUIT")?,
            usr1: listen(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: listen(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }

    async fn recv(&mut self) -> Option<Signal> {
        tokio::select! {
            Some(()) = self.int.recv() => Some(Signal::SIGINT),
            Some(()) = self.term.recv() => Some(Signal::SIGTERM),
            Some(()) = self.hup.recv() => Some(Signal::SIGHUP),
            Some(()) = self.quit.recv() => Some(Signal::SIGQUIT),
            Some(()) = self.usr1.recv() => Some(Signal::SIGUSR1),
            Some(()) = self.usr2.recv() => Some(Signal::SIGUSR2),
            else => None,
        }
    }
}

/// Replaces secret values in a byte stream with [`MASK`], chunk by chunk.
///
/// Patterns: each secret value is split into lines on `\n`, with a trailing `\r` removed. Every
/// line that is not empty or all ASCII whitespace is a pattern. The whole value is one too, unless
/// it is blank. A multi-line value (a PEM key) is therefore hidden whole and line by line.
///
/// Every byte covered by an occurrence of any pattern is hidden. Overlapping occurrences (of the
/// same or different patterns) merge into one [`MASK`], but occurrences that merely touch get one
/// each. At a given position the longest pattern wins, so `abc` in `abcdef` (both secrets)
/// never leaves `def` visible. Matching is on bytes, so any binary content works, and the output
/// is the same however the input is split into chunks.
///
/// Holding back: [`Masker::feed`] returns everything except the longest suffix of the pending
/// data that is a proper prefix of some pattern, so a secret split across two reads is never
/// printed. That suffix is released (masked or not) once more data or [`Masker::finish`]
/// settles it. Nothing is held for any other reason, so a prompt without a newline comes out at
/// once unless it ends with the start of a secret.
///
/// Cost: per input byte, one lookup by first byte, then a comparison against each pattern
/// starting with that byte. That is O(n·k·m) in the worst case for n bytes, k patterns sharing a
/// first byte and pattern length m, and close to O(n) for a handful of secrets. Between calls at
/// most the longest pattern's length minus one bytes are held.
///
/// A very short secret (one or two characters) gets masked wherever those bytes appear.
///
/// Contains secrets and possibly partial secrets, so it has no `Debug`, and the patterns and held
/// bytes are zeroized on drop.
pub struct Masker {
    /// Sorted by length, longest first, without duplicates or empty entries.
    patterns: Vec<Zeroizing<Vec<u8>>>,
    /// For each byte value, the indices (into `patterns`, so longest first) of the patterns
    /// starting with it.
    by_first: Vec<Vec<usize>>,
    longest: usize,
    /// Input not yet released. Its capacity covers a full pump read plus a held suffix, so in
    /// `lk run` it never grows, which would leave an unzeroized copy behind.
    pending: Zeroizing<Vec<u8>>,
    /// How many bytes at the start of `pending` lie inside a masked run whose [`MASK`] has
    /// already been returned.
    covered: usize,
}

impl Masker {
    /// Builds a masker for the secret `values` (the type's documentation explains how they become
    /// patterns). With no usable values it passes everything through unchanged.
    pub fn new(values: &[Zeroizing<Vec<u8>>]) -> Masker {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut add = |candidate: &[u8]| {
            if !is_blank(candidate) && !patterns.iter().any(|p| p.as_slice() == candidate) {
                patterns.push(Zeroizing::new(candidate.to_vec()));
            }
        };
        for value in values {
            add(value);
            for line in value.split(|&b| b == b'\n') {
                add(line.strip_suffix(b"\r").unwrap_or(line));
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let mut by_first = vec![Vec::new(); 256];
        for (index, pattern) in patterns.iter().enumerate() {
            if let Some(&first) = pattern.first() {
                by_first[usize::from(first)].push(index);
            }
        }
        let longest = patterns.first().map_or(0, |p| p.len());
        Masker {
            patterns,
            by_first,
            longest,
            pending: Zeroizing::new(Vec::with_capacity(CHUNK + longest)),
            covered: 0,
        }
    }

    /// Takes the next chunk of the stream and returns the bytes that are safe to print now.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return input.to_vec();
        }
        self.pending.extend_from_slice(input);
        let cut = self.hold_from();
        self.release(cut)
    }

    /// Ends the stream: returns everything still held, masked where it completes a pattern.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.release(self.pending.len());
        self.covered = 0;
        out
    }

    /// Start of the longest suffix of `pending` that is a proper prefix of some pattern, or
    /// `pending.len()` when there is none.
    fn hold_from(&self) -> usize {
        let len = self.pending.len();
        let start = len.saturating_sub(self.longest.saturating_sub(1));
        (start..len)
            .find(|&i| self.could_start_pattern(&self.pending[i..]))
            .unwrap_or(len)
    }

    /// Returns whether `rest` (the whole remaining input) is a proper prefix of some pattern.
    fn could_start_pattern(&self, rest: &[u8]) -> bool {
        let Some(&first) = rest.first() else {
            return false;
        };
        self.by_first[usize::from(first)].iter().any(|&index| {
            let pattern = &self.patterns[index];
            pattern.len() > rest.len() && pattern.starts_with(rest)
        })
    }

    /// Length of the longest pattern that `rest` starts with.
    fn longest_match(&self, rest: &[u8]) -> Option<usize> {
        let &first = rest.first()?;
        self.by_first[usize::from(first)]
            .iter()
            .map(|&index| &self.patterns[index])
            .find(|pattern| rest.starts_with(pattern))
            .map(|pattern| pattern.len())
    }

    /// Removes `pending[..cut]` and returns its masked form.
    ///
    /// Every pattern occurrence starting before `cut` lies wholly inside `pending`, because `cut`
    /// is where the first possibly incomplete one starts. A masked run reaching past `cut` is
    /// remembered in `covered`.
    fn release(&mut self, cut: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(cut);
        // End of the masked run being written. Bytes before it are hidden.
        let mut run_end = self.covered;
        for i in 0..cut {
            if let Some(len) = self.longest_match(&self.pending[i..]) {
                if i >= run_end {
                    out.extend_from_slice(MASK.as_bytes());
                }
                run_end = run_end.max(i + len);
            } else if i >= run_end {
                out.push(self.pending[i]);
            }
        }
        self.covered = run_end.saturating_sub(cut);
        self.pending.drain(..cut);
        out
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncBufReadExt;

    fn secrets(values: &[&[u8]]) -> Vec<Zeroizing<Vec<u8>>> {
        values.iter().map(|v| Zeroizing::new(v.to_vec())).collect()
    }

    /// Masks `input` in one go.
    fn mask_all(values: &[&[u8]], input: &[u8]) -> Vec<u8> {
        let mut masker = Masker::new(&secrets(values));
        let mut out = masker.feed(input);
        out.extend(masker.finish());
        out
    }

    /// Masks `input` fed in pieces ending at each of `splits`.
    fn mask_split(values: &[&[u8]], input: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut masker = Masker::new(&secrets(values));
        let mut out = Vec::new();
        let mut from = 0;
        for &to in splits {
            out.extend(masker.feed(&input[from..to]));
            from = to;
        }
        out.extend(masker.feed(&input[from..]));
        out.extend(masker.finish());
        out
    }

    #[test]
    fn single_line_secret_is_masked_everywhere() {
        assert_eq!(
            mask_all(&[b"hunter2"], b"pw=hunter2 again hunter2\n"),
            b"pw=*** again ***\n"
        );
    }

    #[test]
    fn output_without_secrets_passes_unchanged() {
        assert_eq!(mask_all(&[b"hunter2"], b"hello hunt\n"), b"hello hunt\n");
        assert_eq!(mask_all(&[], b"anything"), b"anything");
    }

    #[test]
    fn multi_line_value_masks_each_line() {
        let pem: &[u8] = b"-----BEGIN KEY-----\r\nQUJDREVG\r\nR0hJSktM\r\n-----END KEY-----\r\n";
        // Whole value at once.
        assert_eq!(mask_all(&[pem], pem), b"***");
        // Lines on their own, in another order, with the `\r` dropped.
        assert_eq!(
            mask_all(&[pem], b"a R0hJSktM b\nQUJDREVG\n"),
            b"a *** b\n***\n"
        );
    }

    #[test]
    fn blank_lines_of_a_value_are_not_patterns() {
        let value: &[u8] = b"first\n\n   \nsecond";
        assert_eq!(mask_all(&[value], b"a   b\n\nfirst"), b"a   b\n\n***");
        assert_eq!(mask_all(&[b"  \n"], b"a  b\n"), b"a  b\n");
    }

    #[test]
    fn secret_split_at_every_point_is_never_printed() {
        let values: &[&[u8]] = &[b"hunter2", b"s3cr3t-value"];
        let input: &[u8] = b"x hunter2 y s3cr3t-value zhunter2";
        let expected: &[u8] = b"x *** y *** z***";
        assert_eq!(mask_all(values, input), expected);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                assert_eq!(
                    mask_split(values, input, &[a, b]),
                    expected,
                    "split at {a} and {b}"
                );
            }
        }
        // Byte by byte: no chunk ever carries a secret.
        let mut masker = Masker::new(&secrets(values));
        for &byte in input {
            let out = masker.feed(&[byte]);
            assert!(!out.windows(2).any(|w| w == b"hu" || w == b"s3"), "{out:?}");
        }
    }

    #[test]
    fn longest_pattern_wins_and_overlaps_merge() {
        // One secret inside another: the longer one is hidden whole.
        assert_eq!(
            mask_all(&[b"abc", b"abcdef"], b"1abcdef2abc3"),
            b"1***2***3"
        );
        // Partial overlap of two secrets: no byte of either stays visible.
        assert_eq!(mask_all(&[b"abcd", b"cdef"], b"xxabcdefyy"), b"xx***yy");
        // Overlapping occurrences of one secret.
        assert_eq!(mask_all(&[b"aba"], b"ababa!"), b"***!");
        // Touching occurrences each get a mask.
        assert_eq!(mask_all(&[b"ab"], b"abab"), b"******");
        // Held for the longer secret, then released as the shorter one.
        let mut masker = Masker::new(&secrets(&[b"abc", b"abcdef"]));
        assert_eq!(masker.feed(b"-abcd"), b"-");
        assert_eq!(masker.feed(b"x"), b"***dx");
    }

    #[test]
    fn run_past_held_data_masked_once() {
        // `abc` completes while `bcdzz` may still be starting: the mask is printed at once and
        // the rest of the run is not printed again.
        let values: &[&[u8]] = &[b"abc", b"bcdzz"];
        let mut masker = Masker::new(&secrets(values));
        assert_eq!(masker.feed(b"xabcd"), b"x***");
        assert_eq!(masker.feed(b"zz!"), b"!");
        assert_eq!(masker.finish(), b"");
        let mut masker = Masker::new(&secrets(values));
        assert_eq!(masker.feed(b"xabcd"), b"x***");
        assert_eq!(masker.feed(b"q"), b"dq");
    }

    #[test]
    fn binary_bytes_are_matched_exactly() {
        let secret: &[u8] = &[0x00, 0xff, 0x10, 0x80, 0x00];
        let mut input = vec![0x00, 0x00, 0xff];
        input.extend_from_slice(secret);
        input.extend_from_slice(&[0xff, 0x00]);
        let mut expected = vec![0x00, 0x00, 0xff];
        expected.extend_from_slice(MASK.as_bytes());
        expected.extend_from_slice(&[0xff, 0x00]);
        assert_eq!(mask_all(&[secret], &input), expected);
        for split in 0..=input.len() {
            assert_eq!(mask_split(&[secret], &input, &[split]), expected);
        }
    }

    #[test]
    fn prompt_without_newline_is_emitted_at_once() {
        let mut masker = Masker::new(&secrets(&[b"hunter2"]));
        assert_eq!(masker.feed(b"Password: "), b"Password: ");
        // Ending with the start of a secret: only that start is held.
        assert_eq!(masker.feed(b"enter h"), b"enter ");
        assert_eq!(masker.feed(b"i"), b"hi");
    }

    #[test]
    fn finish_flushes_held_non_secret() {
        let mut masker = Masker::new(&secrets(&[b"hunter2"]));
        assert_eq!(masker.feed(b"ok hunte"), b"ok ");
        assert_eq!(masker.finish(), b"hunte");
        // The masker is reusable after `finish`.
        assert_eq!(masker.feed(b"hunter2"), b"***");
        assert_eq!(masker.finish(), b"");
    }

    /// Random secrets, inputs and chunkings over a small alphabet: chunking never changes the
    /// output, no secret survives, and at most `longest - 1` bytes are ever held.
    #[test]
    fn random_chunking_gives_the_same_safe_output() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % u64::try_from(bound).unwrap()).unwrap()
        };
        let alphabet = b"abc\n";
        for _ in 0..2000 {
            let values: Vec<Vec<u8>> = (0..1 + next(3))
                .map(|_| (0..1 + next(5)).map(|_| alphabet[next(4)]).collect())
                .collect();
            let value_refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let input: Vec<u8> = (0..next(40)).map(|_| alphabet[next(4)]).collect();
            let mut splits: Vec<usize> = (0..next(6)).map(|_| next(input.len() + 1)).collect();
            splits.sort_unstable();
            let whole = mask_all(&value_refs, &input);
            assert_eq!(
                mask_split(&value_refs, &input, &splits),
                whole,
                "values {values:?} input {input:?} splits {splits:?}"
            );
            let masker = Masker::new(&secrets(&value_refs));
            for pattern in &masker.patterns {
                assert!(
                    !whole
                        .windows(pattern.len())
                        .any(|w| w == pattern.as_slice()),
                    "pattern {pattern:?} left in {whole:?} from {input:?}"
                );
            }
            let mut masker = Masker::new(&secrets(&value_refs));
            for &byte in &input {
                masker.feed(&[byte]);
                assert!(masker.pending.len() < masker.longest.max(1));
            }
        }
    }

    #[test]
    fn foreground_is_read_from_proc_stat() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 34816 4242 4194304 0 0";
        assert_eq!(foreground_from_stat(stat), Some(true));
        let stat = "4242 (prog) S 1 4242 4242 34816 4300 4194304 0 0";
        assert_eq!(foreground_from_stat(stat), Some(false));
        let stat = "4242 (prog) S 1 4242 4242 0 -1 4194304 0 0";
        assert_eq!(foreground_from_stat(stat), Some(false));
        assert_eq!(foreground_from_stat("garbage"), None);
    }

    #[test]
    fn keyboard_signals_are_not_forwarded_twice() {
        assert!(!should_forward(Signal::SIGINT, true));
        assert!(!should_forward(Signal::SIGQUIT, true));
        assert!(should_forward(Signal::SIGINT, false));
        assert!(should_forward(Signal::SIGQUIT, false));
        for sig in [
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ] {
            assert!(should_forward(sig, true));
            assert!(should_forward(sig, false));
        }
    }

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    fn path_env() -> (OsString, OsString) {
        (os("PATH"), os("/usr/local/bin:/usr/bin:/bin"))
    }

    fn spec(program: &str, args: &[&str], env: Vec<(OsString, OsString)>) -> ChildSpec {
        ChildSpec {
            program: os(program),
            args: args.iter().map(|a| os(a)).collect(),
            env,
            masks: Vec::new(),
            masking: true,
        }
    }

    fn sh(script: &str) -> ChildSpec {
        spec("/bin/sh", &["-c", script], vec![path_env()])
    }

    /// Runs `spec` with signals from a channel that never delivers one. Returns the exit code,
    /// stdout and stderr.
    async fn run_captured(spec: ChildSpec) -> (Result<i32, ChildError>, Vec<u8>, Vec<u8>) {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = run_with_signals(spec, &mut out, &mut err, SignalSource::Channel(rx)).await;
        (code, out, err)
    }

    #[tokio::test]
    async fn exit_code_is_passed_through() {
        let (code, _, _) = run_captured(sh("exit 7")).await;
        assert_eq!(code.unwrap(), 7);
        let (code, _, _) = run_captured(sh("exit 0")).await;
        assert_eq!(code.unwrap(), 0);
    }

    #[tokio::test]
    async fn killed_by_signal_gives_128_plus_signal() {
        let (code, _, _) = run_captured(sh("kill -TERM $$")).await;
        assert_eq!(code.unwrap(), 143);
        let (code, _, _) = run_captured(sh("kill -KILL $$")).await;
        assert_eq!(code.unwrap(), 137);
    }

    #[tokio::test]
    async fn environment_is_exactly_the_given_one() {
        let env = vec![(os("A"), os("1")), (os("B"), os("two words"))];
        let (code, out, err) = run_captured(spec("/usr/bin/env", &[], env)).await;
        assert_eq!(code.unwrap(), 0);
        assert_eq!(String::from_utf8(out).unwrap(), "A=1\nB=two words\n");
        assert_eq!(err, b"");
    }

    #[tokio::test]
    async fn arguments_reach_the_program_verbatim() {
        let (code, out, _) = run_captured(spec(
            "/bin/echo",
            &["a  b", "$HOME", "*", "'q'"],
            Vec::new(),
        ))
        .await;
        assert_eq!(code.unwrap(), 0);
        assert_eq!(String::from_utf8(out).unwrap(), "a  b $HOME * 'q'\n");
    }

    #[tokio::test]
    async fn program_is_looked_up_in_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/bin/echo", dir.path().join("lk-test-echo")).unwrap();
        let env = vec![(os("PATH"), dir.path().as_os_str().to_owned())];
        let (code, out, _) = run_captured(spec("lk-test-echo", &["found"], env)).await;
        assert_eq!(code.unwrap(), 0);
        assert_eq!(out, b"found\n");
    }

    #[tokio::test]
    async fn missing_program_is_not_found() {
        let (code, _, _) = run_captured(spec("lk-no-such-program", &[], vec![path_env()])).await;
        let err = code.unwrap_err();
        assert!(
            matches!(&err, ChildError::NotFound { program } if program == "lk-no-such-program"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "command `lk-no-such-program` not found: check the name or PATH"
        );
    }

    #[tokio::test]
    async fn non_executable_file_is_permission_denied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-executable");
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let program = path.to_str().unwrap().to_owned();
        let (code, _, _) = run_captured(spec(&program, &[], Vec::new())).await;
        let err = code.unwrap_err();
        assert!(
            matches!(&err, ChildError::PermissionDenied { program: p } if *p == program),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("command `{program}` is not executable")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn secrets_are_masked_on_stdout_and_stderr() {
        let mut spec = sh(r#"printf 'token=%s\n' "$T"; printf 'err %s!' "$T" >&2"#);
        spec.env.push((os("T"), os("s3cr3t-tok")));
        spec.masks = secrets(&[b"s3cr3t-tok"]);
        let (code, out, err) = run_captured(spec).await;
        assert_eq!(code.unwrap(), 0);
        assert_eq!(out, b"token=***\n");
        assert_eq!(err, b"err ***!");
    }

    #[tokio::test]
    async fn trailing_output_is_not_lost() {
        // No newline at the end, and the last bytes look like the start of a secret.
        let mut spec = sh("printf 'first\\n'; printf 'last hunt' >&2; printf 'end hun'");
        spec.masks = secrets(&[b"hunter2"]);
        let (code, out, err) = run_captured(spec).await;
        assert_eq!(code.unwrap(), 0);
        assert_eq!(out, b"first\nend hun");
        assert_eq!(err, b"last hunt");
    }

    #[tokio::test]
    async fn large_output_passes_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let mut content = Vec::new();
        let mut expected = Vec::new();
        let mut line = 0u32;
        while content.len() < 10 * 1024 * 1024 {
            let plain = format!("line {line:08} {}\n", "x".repeat(line as usize % 97));
            content.extend_from_slice(plain.as_bytes());
            expected.extend_from_slice(plain.as_bytes());
            if line.is_multiple_of(1000) {
                content.extend_from_slice(b"key=hunter2;\n");
                expected.extend_from_slice(b"key=***;\n");
            }
            line += 1;
        }
        std::fs::write(&path, &content).unwrap();
        let mut spec = spec("/bin/cat", &[path.to_str().unwrap()], Vec::new());
        spec.masks = secrets(&[b"hunter2"]);
        let (code, out, _) = run_captured(spec).await;
        assert_eq!(code.unwrap(), 0);
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "output differs from the expected 10 MB");
    }

    #[tokio::test]
    async fn without_masking_the_child_inherits_stdout() {
        // The child compares its fd 1 with ours: equal only when inherited, not piped.
        let ours = std::fs::read_link("/proc/self/fd/1").unwrap();
        let mut spec = sh(r#"[ "$(readlink /proc/$$/fd/1)" = "$OURS" ]"#);
        spec.env.push((os("OURS"), ours.into_os_string()));
        spec.masking = false;
        let (code, out, err) = run_captured(spec).await;
        assert_eq!(code.unwrap(), 0);
        assert_eq!((out, err), (Vec::new(), Vec::new()));
        // And with masking it is a pipe of ours, so the same check fails.
        let ours = std::fs::read_link("/proc/self/fd/1").unwrap();
        let mut spec = sh(r#"[ "$(readlink /proc/$$/fd/1)" = "$OURS" ]"#);
        spec.env.push((os("OURS"), ours.into_os_string()));
        let (code, _, _) = run_captured(spec).await;
        assert_eq!(code.unwrap(), 1);
    }

    /// Builds a script that exits with `code` on `sig` and prints `ready` once the trap is set.
    /// It gives up with 0 after about 20 s, so a missed signal fails the test instead of hanging.
    fn trapping(sig: &str, code: u8) -> ChildSpec {
        sh(&format!(
            "trap 'exit {code}' {sig}; echo ready; i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done"
        ))
    }

    /// Fails the test instead of hanging it when a signal goes missing.
    async fn within_10s<T>(run: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .expect("no result within 10 s")
    }

    #[tokio::test]
    async fn signal_is_forwarded_to_the_child() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (out_w, out_r) = tokio::io::duplex(1024);
        let mut err = Vec::new();
        let run = run_with_signals(
            trapping("USR1", 42),
            out_w,
            &mut err,
            SignalSource::Channel(rx),
        );
        let trigger = async {
            let mut lines = tokio::io::BufReader::new(out_r).lines();
            assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
            tx.send(Signal::SIGUSR1).unwrap();
            while lines.next_line().await.unwrap().is_some() {}
        };
        let (code, ()) = within_10s(async { tokio::join!(run, trigger) }).await;
        assert_eq!(code.unwrap(), 42);
    }

    /// The real path: a signal sent to this process reaches the child. SIGUSR2 is used because
    /// no other test listens for process signals, so none of them forwards it anywhere.
    #[tokio::test]
    async fn signal_to_this_process_is_forwarded() {
        let (out_w, out_r) = tokio::io::duplex(1024);
        let mut err = Vec::new();
        let run = run_child_with(trapping("USR2", 43), out_w, &mut err);
        let trigger = async {
            let mut lines = tokio::io::BufReader::new(out_r).lines();
            assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
            nix::sys::signal::kill(Pid::this(), Signal::SIGUSR2).unwrap();
            while lines.next_line().await.unwrap().is_some() {}
        };
        let (code, ()) = within_10s(async { tokio::join!(run, trigger) }).await;
        assert_eq!(code.unwrap(), 43);
    }

    #[tokio::test]
    async fn terminating_signal_stops_draining_after_exit() {
        // The shell exits at once but leaves a process holding its stdout open.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (out_w, out_r) = tokio::io::duplex(1024);
        let mut err = Vec::new();
        let done = std::cell::Cell::new(false);
        let spec = sh("sleep 30 & echo $$ $!; exit 5");

        let run = async {
            let code = run_with_signals(spec, out_w, &mut err, SignalSource::Channel(rx)).await;
            done.set(true);
            code
        };

        let trigger = async {
            let mut lines = tokio::io::BufReader::new(out_r).lines();
            let line = lines.next_line().await.unwrap().unwrap();
            let pids: Vec<i32> = line.split(' ').map(|p| p.parse().unwrap()).collect();
            let (shell, sleeper) = (Pid::from_raw(pids[0]), Pid::from_raw(pids[1]));

            // Once the shell is reaped, `lk` is draining.
            while nix::sys::signal::kill(shell, None).is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }

            // Not a terminating signal: draining goes on.
            tx.send(Signal::SIGUSR1).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let still_draining = !done.get();
            tx.send(Signal::SIGTERM).unwrap();
            (still_draining, sleeper)
        };

        let (code, (still_draining, sleeper)) =
            within_10s(async { tokio::join!(run, trigger) }).await;
        nix::sys::signal::kill(sleeper, Signal::SIGKILL).unwrap();
        assert!(still_draining, "SIGUSR1 stopped the draining");
        assert_eq!(code.unwrap(), 5);
    }
}
