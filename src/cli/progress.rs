//! What the CLI shows while it works. On a terminal (stderr): an indicatif bar for the release
//! download and a spinner per step, cleared when done. Always: one plain line per step on
//! stdout (`uploading trained model X ... done`), so logs and pipes get a record. Each line is
//! written whole when its step ends: the download and the cluster check run side by side, and
//! a line begun by one must not be finished by the other.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::bundle::fetch::DownloadProgress;

#[derive(Clone, Copy)]
pub struct Out {
    /// Draw bars and spinners (stderr is a terminal).
    fancy: bool,
}

impl Out {
    pub fn detect() -> Out {
        Out {
            fancy: std::io::stderr().is_terminal(),
        }
    }

    pub fn line(&self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
    }

    /// Runs one step: a spinner on a terminal, then `label ... done` (or `failed`) on stdout.
    pub async fn step<T, E>(
        &self,
        label: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let spinner = if self.fancy {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .expect("template")
                    .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
            );
            pb.set_message(format!("{label} ..."));
            pb.enable_steady_tick(Duration::from_millis(100));
            Some(pb)
        } else {
            None
        };
        let res = fut.await;
        let verdict = if res.is_ok() { "done" } else { "failed" };
        if let Some(pb) = spinner {
            pb.finish_and_clear();
        }
        println!("{label} ... {verdict}");
        res
    }

    /// A download progress hook for `Fetcher::on_download`, and the handle that ends it.
    pub fn download(&self, label: String) -> (DownloadProgress, Download) {
        let state = Arc::new(Mutex::new(DownloadState::default()));
        let fancy = self.fancy;
        let st = state.clone();
        let lbl = label.clone();
        let hook: DownloadProgress = Arc::new(move |n, total| {
            let mut s = st.lock().expect("download state");
            s.bytes = n;
            if !s.started {
                s.started = true;
                if fancy {
                    let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                    let tpl = if total.is_some() {
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
                    } else {
                        "{spinner} {msg} {bytes} {bytes_per_sec}"
                    };
                    pb.set_style(
                        ProgressStyle::with_template(tpl)
                            .expect("template")
                            .progress_chars("=> "),
                    );
                    pb.set_message(lbl.clone());
                    s.bar = Some(pb);
                } else {
                    s.total = total;
                }
            }
            if let Some(pb) = &s.bar {
                pb.set_position(n);
            }
        });
        (
            hook,
            Download {
                state,
                label,
                fancy,
            },
        )
    }
}

#[derive(Default)]
struct DownloadState {
    started: bool,
    bytes: u64,
    total: Option<u64>,
    bar: Option<ProgressBar>,
}

pub struct Download {
    state: Arc<Mutex<DownloadState>>,
    label: String,
    fancy: bool,
}

impl Download {
    /// Ends the download display; true when a download actually took place.
    pub fn finish(self, ok: bool) -> bool {
        let mut s = self.state.lock().expect("download state");
        if !s.started {
            return false;
        }
        let verdict = if ok {
            format!("done ({})", HumanBytes(s.bytes))
        } else {
            "failed".to_string()
        };
        if let Some(pb) = s.bar.take() {
            pb.finish_and_clear();
        }
        match s.total {
            Some(t) if !self.fancy => println!("{} ({}) ... {verdict}", self.label, HumanBytes(t)),
            _ => println!("{} ... {verdict}", self.label),
        }
        true
    }
}
