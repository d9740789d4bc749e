//! Byte streams handed between threads in bounded chunks, so that the stages of opening a model
//! (inflate, scan, decode, check) run on both cores while memory stays at a few chunks.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

/// Bytes handed over at a time, and how many chunks may wait: together they bound the memory a
/// pipe takes (about 1.25 MiB) when its reader falls behind.
pub const CHUNK: usize = 256 * 1024;
const QUEUED_CHUNKS: usize = 4;

/// A chunk, or the error that ended the stream (passed on as it is, so messages do not change).
type Item = io::Result<Vec<u8>>;

/// The writing end of a pipe. Sending fails once the reader is gone.
pub struct PipeWriter {
    tx: SyncSender<Item>,
}

impl PipeWriter {
    /// `Err` when the reader is gone.
    pub fn send(&self, chunk: Vec<u8>) -> Result<(), ()> {
        self.tx.send(Ok(chunk)).map_err(drop)
    }

    /// Ends the stream with `e`: the reader returns it after the bytes sent before.
    fn fail(self, e: io::Error) {
        let _ = self.tx.send(Err(e));
    }
}

/// A bounded pipe; dropping the writer is the reader's end of file.
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(QUEUED_CHUNKS);
    (
        PipeWriter { tx },
        PipeReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        },
    )
}

/// Reads `r` on a thread of `scope`, up to a few chunks ahead of the returned reader. The thread
/// ends (dropping `r`, so a pipe that `r` reads from is closed too) at the end of `r`, at its
/// first error (which the reader then returns), or once the reader is dropped.
pub fn read_ahead<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    mut r: R,
) -> PipeReader {
    let (writer, reader) = pipe();
    scope.spawn(move || {
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let read = (&mut r).take(CHUNK as u64).read_to_end(&mut chunk);
            // The bytes before an error go first, as a plain reader would have returned them.
            if !chunk.is_empty() && writer.send(chunk).is_err() {
                break;
            }
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    writer.fail(e);
                    break;
                }
            }
        }
    });
    reader
}

/// The reading end of a pipe: the chunks as one stream.
pub struct PipeReader {
    rx: Receiver<Item>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(item) => (self.chunk, self.pos) = (item?, 0),
                Err(_) => break,
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_passes_bytes_and_the_first_error() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| i as u8).collect();
        std::thread::scope(|s| {
            let mut r = read_ahead(s, &data[..]);
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert_eq!(got, data);
        });

        let failing = (&data[..CHUNK + 5]).chain(FailingReader);
        std::thread::scope(|s| {
            let mut r = read_ahead(s, failing);
            let mut got = Vec::new();
            let err = r.read_to_end(&mut got).unwrap_err();
            assert_eq!(err.to_string(), "broken");
            assert_eq!(got, &data[..CHUNK + 5]);
        });
    }

    #[test]
    fn a_dropped_reader_stops_the_pump() {
        let endless = io::repeat(b' ');
        // The scope waits for the pump: this returns only if the pump stopped.
        std::thread::scope(|s| drop(read_ahead(s, endless)));
    }

    struct FailingReader;
    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
    }
}
