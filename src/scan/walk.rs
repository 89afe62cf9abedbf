//! What `token-authority scan` reads: files, folders (recursively) and stdin.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError, mpsc},
    thread,
};

use super::{CHUNK, Finding, scan_reader};

/// One input named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`-`).
    Stdin,
    /// A file, or a folder to walk.
    Path(PathBuf),
}

impl Input {
    /// Returns the inputs the command line names: stdin for `-` or for none at all.
    pub fn from_args(paths: &[PathBuf]) -> Vec<Self> {
        if paths.is_empty() {
            return vec![Self::Stdin];
        }
        paths
            .iter()
            .map(|path| {
                if path.as_os_str() == "-" {
                    Self::Stdin
                } else {
                    Self::Path(path.clone())
                }
            })
            .collect()
    }
}

/// How stdin is named in findings.
pub const STDIN_NAME: &str = "<stdin>";

/// What a scan read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Files (and stdin) read to the end.
    pub files: u64,
    /// The bytes they had.
    pub bytes: u64,
    /// Files and folders that could not be read.
    pub unreadable: u64,
}

/// Where a scan's results go, as it goes: the findings of each file that has any, in
/// order, and each path that could not be read.
pub trait Sink {
    /// Takes the findings of one file (never empty).
    fn found(&mut self, name: &str, findings: Vec<Finding>);
    /// Takes a path that could not be read, and why.
    fn unreadable(&mut self, path: &Path, error: &io::Error);
}

/// Scans the inputs on `readers` threads, reporting to `sink` in the order of the inputs. A
/// folder is walked depth first in name order, its files before its subfolders; `.git`
/// folders and symlinks (to folders, which could loop, and to files, which could be
/// anywhere) are skipped, and other special files (FIFOs, sockets, devices) are read only
/// when named; a named symlink is followed.
pub fn scan(inputs: &[Input], readers: usize, sink: &mut impl Sink) -> Totals {
    let readers = readers.max(1);
    let (batches, queue) = mpsc::sync_channel::<(u64, Vec<Job>)>(QUEUE_LEN);
    let queue = Mutex::new(queue);
    let (done, results) = mpsc::channel::<(u64, Vec<Done>)>();
    let mut totals = Totals::default();
    thread::scope(|scope| {
        scope.spawn(move || Walker::new(batches).run(inputs));
        for _ in 0..readers {
            let (queue, done) = (&queue, done.clone());
            scope.spawn(move || read(queue, done));
        }
        drop(done);
        // Results come in any order; they go to the sink in the order of the jobs.
        let (mut waiting, mut next) = (BTreeMap::new(), 0u64);
        for (seq, batch) in results {
            waiting.insert(seq, batch);
            while let Some(batch) = waiting.remove(&next) {
                next += 1;
                deliver(batch, &mut totals, sink);
            }
        }
    });
    totals
}

/// Reads the batches of the queue until it is empty and closed, sending what each became.
fn read(queue: &Mutex<mpsc::Receiver<(u64, Vec<Job>)>>, done: mpsc::Sender<(u64, Vec<Done>)>) {
    let mut buf = Vec::new();
    loop {
        // The lock is held only to take a batch (a `while let` would hold it through the
        // body); a poisoned one still hands them out.
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((seq, batch)) = next else { return };
        let results = batch.into_iter().map(|job| job.run(&mut buf)).collect();
        if done.send((seq, results)).is_err() {
            return;
        }
    }
}

/// Counts a batch's results and hands them to the sink.
fn deliver(batch: Vec<Done>, totals: &mut Totals, sink: &mut impl Sink) {
    for result in batch {
        match result {
            Done::Read {
                name,
                findings,
                bytes,
            } => {
                totals.files += 1;
                totals.bytes += bytes;
                if !findings.is_empty() {
                    sink.found(&name, findings);
                }
            }
            Done::Failed(path, error) => {
                totals.unreadable += 1;
                sink.unreadable(&path, &error);
            }
        }
    }
}

/// How many threads read files unless told: opening and reading many small files is most
/// of a scan's time, and two readers take a third less of it than one (scripts/bench-scan.sh
/// on 2 cores), but past a few there is little left to gain.
pub fn default_readers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get().min(4))
}
/// How many batches the walk may list ahead of the readers.
const QUEUE_LEN: usize = 16;
/// Files go to the readers in batches of about this many bytes or files, whichever comes
/// first: one hand-over per file would cost more in thread wake-ups than it gains.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_FILES: usize = 64;

/// One thing to read, or a path that could not even be listed or looked at.
enum Job {
    Stdin,
    File(PathBuf),
    Failed(PathBuf, io::Error),
}

/// What became of a job.
enum Done {
    Read {
        name: String,
        findings: Vec<Finding>,
        bytes: u64,
    },
    Failed(PathBuf, io::Error),
}

impl Job {
    fn run(self, buf: &mut Vec<u8>) -> Done {
        let (path, result) = match self {
            Self::Failed(path, error) => return Done::Failed(path, error),
            Self::Stdin => (
                PathBuf::from(STDIN_NAME),
                scan_reader(&mut io::stdin().lock(), buf, CHUNK),
            ),
            Self::File(path) => {
                let result = File::open(&path).and_then(|mut f| scan_reader(&mut f, buf, CHUNK));
                (path, result)
            }
        };
        match result {
            Ok((findings, bytes)) => Done::Read {
                name: path.display().to_string(),
                findings,
                bytes,
            },
            Err(error) => Done::Failed(path, error),
        }
    }
}

/// Lists the jobs of the inputs, in order, in numbered batches.
struct Walker {
    batches: mpsc::SyncSender<(u64, Vec<Job>)>,
    next: u64,
    batch: Vec<Job>,
    batch_bytes: u64,
}

impl Walker {
    fn new(batches: mpsc::SyncSender<(u64, Vec<Job>)>) -> Self {
        Self {
            batches,
            next: 0,
            batch: Vec::new(),
            batch_bytes: 0,
        }
    }

    /// Lists the inputs' jobs and hands over the last batch; the queue closes on return.
    fn run(mut self, inputs: &[Input]) {
        for input in inputs {
            match input {
                Input::Stdin => self.send(Job::Stdin, BATCH_BYTES),
                Input::Path(path) => match fs::metadata(path) {
                    Ok(meta) if meta.is_dir() => self.walk(path.clone()),
                    Ok(meta) => self.send(Job::File(path.clone()), meta.len()),
                    Err(error) => self.send(Job::Failed(path.clone(), error), 0),
                },
            }
        }
        self.flush();
    }

    /// Adds a job of about `bytes` to the batch, sending the batch when it is full.
    fn send(&mut self, job: Job, bytes: u64) {
        self.batch.push(job);
        self.batch_bytes += bytes;
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // The readers only stop early if the collector is gone, and then nobody listens.
        let _ = self
            .batches
            .send((self.next, std::mem::take(&mut self.batch)));
        self.next += 1;
        self.batch_bytes = 0;
    }

    /// Walks a folder without recursion, so that no depth of folders overflows the stack.
    fn walk(&mut self, root: PathBuf) {
        let mut folders = vec![root];
        while let Some(folder) = folders.pop() {
            let listed = fs::read_dir(&folder).and_then(|d| d.collect::<Result<Vec<_>, _>>());
            let mut entries = match listed {
                Ok(entries) => entries,
                Err(error) => {
                    self.send(Job::Failed(folder, error), 0);
                    continue;
                }
            };
            entries.sort_by_key(|entry| entry.file_name());
            let mut subfolders = Vec::new();
            for entry in entries {
                let path = entry.path();
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => {
                        if entry.file_name() != ".git" {
                            subfolders.push(path);
                        }
                    }
                    // Not followed, to files no more than to folders: a link in a checked-out
                    // tree may point anywhere (`/proc/self/environ`, the runner's home),
                    // and `scan --report` would print and revoke the CI job's own secret.
                    // A link named on the command line is read.
                    Ok(kind) if kind.is_symlink() => {}
                    Ok(kind) if !kind.is_file() => {}
                    // A file, or of a type the folder does not tell: opening it will.
                    _ => {
                        let bytes = entry.metadata().map_or(0, |meta| meta.len());
                        self.send(Job::File(path), bytes);
                    }
                }
            }
            folders.extend(subfolders.into_iter().rev());
        }
    }
}
