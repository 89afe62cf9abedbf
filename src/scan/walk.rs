//! What `token-authority scan` reads: files, folders (recursively) and stdin.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
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

/// Scans the inputs in order. A folder is walked depth first in name order, its files
/// before its subfolders; `.git` folders and symlinked folders (which could loop) are
/// skipped, symlinked files are read, and other special files (FIFOs, sockets, devices)
/// are read only when named on the command line.
pub fn scan(inputs: &[Input], sink: &mut impl Sink) -> Totals {
    let mut walker = Walker {
        sink,
        buf: Vec::new(),
        totals: Totals::default(),
    };
    for input in inputs {
        match input {
            Input::Stdin => walker.read(STDIN_NAME, Path::new("-"), &mut io::stdin().lock()),
            Input::Path(path) => match fs::metadata(path) {
                Ok(meta) if meta.is_dir() => walker.walk(path.clone()),
                Ok(_) => walker.file(path),
                Err(error) => walker.failed(path, &error),
            },
        }
    }
    walker.totals
}

struct Walker<'a, S> {
    sink: &'a mut S,
    /// The read buffer, reused for every file.
    buf: Vec<u8>,
    totals: Totals,
}

impl<S: Sink> Walker<'_, S> {
    /// Walks a folder without recursion, so that no depth of folders overflows the stack.
    fn walk(&mut self, root: PathBuf) {
        let mut folders = vec![root];
        while let Some(folder) = folders.pop() {
            let mut entries =
                match fs::read_dir(&folder).and_then(|d| d.collect::<Result<Vec<_>, _>>()) {
                    Ok(entries) => entries,
                    Err(error) => {
                        self.failed(&folder, &error);
                        continue;
                    }
                };
            entries.sort_by_key(|entry| entry.file_name());
            let mut subfolders = Vec::new();
            for entry in entries {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    self.file(&path);
                    continue;
                };
                if kind.is_dir() {
                    if entry.file_name() != ".git" {
                        subfolders.push(path);
                    }
                } else if kind.is_file() {
                    self.file(&path);
                } else if kind.is_symlink() {
                    match fs::metadata(&path) {
                        Ok(target) if target.is_file() => self.file(&path),
                        Ok(_) => {}
                        Err(error) => self.failed(&path, &error),
                    }
                }
            }
            folders.extend(subfolders.into_iter().rev());
        }
    }

    fn file(&mut self, path: &Path) {
        match File::open(path) {
            Ok(mut file) => self.read(&path.display().to_string(), path, &mut file),
            Err(error) => self.failed(path, &error),
        }
    }

    fn read(&mut self, name: &str, path: &Path, reader: &mut impl io::Read) {
        match scan_reader(reader, &mut self.buf, CHUNK) {
            Ok((findings, bytes)) => {
                self.totals.files += 1;
                self.totals.bytes += bytes;
                if !findings.is_empty() {
                    self.sink.found(name, findings);
                }
            }
            Err(error) => self.failed(path, &error),
        }
    }

    fn failed(&mut self, path: &Path, error: &io::Error) {
        self.totals.unreadable += 1;
        self.sink.unreadable(path, error);
    }
}
