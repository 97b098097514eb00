//! A minimal Chrome DevTools Protocol client for tests that drive a real headless Chromium, over
//! `--remote-debugging-pipe`: Chromium reads NUL-terminated JSON commands from fd 3 and writes
//! NUL-terminated replies and events to fd 4. No websocket, no new crate.

// std::io::pipe (close-on-exec pipes, no libc) is Rust 1.87, above the package's 1.85: only this
// test module needs it, the library and binary still build with 1.85.
#![allow(clippy::incompatible_msrv)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, PipeReader, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// How long one command may take before the test fails instead of hanging.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a navigation or reload may take to fire its load event.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A command's reply: its `result`, or its `error` object.
type Reply = Result<Value, Value>;
/// Replies awaited by command id; `None` once Chromium has closed the pipe.
type Pending = Arc<Mutex<Option<HashMap<u64, SyncSender<Reply>>>>>;

/// A headless Chromium with one page attached; every command goes to that page's session.
pub struct Browser {
    child: Child,
    writer: Mutex<PipeWriter>,
    pending: Pending,
    /// Events other than console output, in arrival order (for the load events).
    events: Mutex<Receiver<Value>>,
    console: Arc<Mutex<Vec<String>>>,
    /// Disconnects when the reader thread sees the pipe close, that is when Chromium has exited.
    reader_done: Mutex<Receiver<()>>,
    next_id: AtomicU64,
    session: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Launches headless Chromium (fresh profile) and attaches to a new blank 1280x900 page.
    /// `None`, after printing why, when no Chromium is installed, unless
    /// CLIP_CLUSTER_REQUIRE_BROWSER is set (CI), where that is a failure instead.
    #[track_caller]
    pub fn launch(test: &str) -> Option<Browser> {
        let Some(binary) = find_chromium() else {
            if std::env::var_os("CLIP_CLUSTER_REQUIRE_BROWSER").is_some() {
                panic!(
                    "{test}: CLIP_CLUSTER_REQUIRE_BROWSER is set but no Chromium was found \
                     (set CLIP_CLUSTER_CHROMIUM, or put chromium, chromium-browser or \
                     google-chrome on PATH)"
                );
            }
            println!("SKIP: {test}: no Chromium (set CLIP_CLUSTER_CHROMIUM or install chromium)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let (profile, log) = (dir.path().join("profile"), dir.path().join("chromium.log"));
        let (child_read, parent_write) = std::io::pipe().expect("pipe to Chromium");
        let (parent_read, child_write) = std::io::pipe().expect("pipe from Chromium");
        let (r, w) = (child_read.as_raw_fd(), child_write.as_raw_fd());
        let mut cmd = Command::new(&binary);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("Chromium log file"));
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl, dup2 and
        // close, which are async-signal-safe; it allocates nothing. Both ends are first copied
        // above fd 10 so that neither dup2 can overwrite the other end, and so that dup2 always
        // changes the fd (dup2 onto itself would leave close-on-exec set). The copies on 3 and 4
        // are not close-on-exec; the pipe's own fds are, so the parent's ends never reach Chromium.
        unsafe {
            cmd.pre_exec(move || {
                let (r2, w2) = (fcntl(r, F_DUPFD, 10), fcntl(w, F_DUPFD, 10));
                if r2 < 0 || w2 < 0 || dup2(r2, 3) < 0 || dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                close(r2);
                close(w2);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: starting {}: {e}", binary.display()));
        // Chromium's ends stay only in Chromium: the reader sees EOF when it exits.
        drop((child_read, child_write));

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let console = Arc::new(Mutex::new(Vec::new()));
        let (event_tx, events) = mpsc::channel();
        let (done_tx, reader_done) = mpsc::channel();
        {
            let (pending, console) = (pending.clone(), console.clone());
            std::thread::spawn(move || {
                read_messages(parent_read, &pending, &console, &event_tx);
                drop(done_tx);
            });
        }
        let mut browser = Browser {
            child,
            writer: Mutex::new(parent_write),
            pending,
            events: Mutex::new(events),
            console,
            reader_done: Mutex::new(reader_done),
            next_id: AtomicU64::new(1),
            session: String::new(),
            log,
            _dir: dir,
        };
        let target = browser.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("Target.attachToTarget returns a sessionId")
            .to_string();
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        // Headless windows keep room for browser chrome (1280x900 gives a 1280x813 page): the
        // page itself is made 1280x900, so screenshots and layouts do not depend on the version.
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        Some(browser)
    }

    /// One command on the page's session: its `result`; panics on a CDP error or after 60 s.
    #[track_caller]
    pub fn call(&self, method: &str, params: Value) -> Value {
        self.call_on(Some(&self.session), method, params)
    }

    /// Navigates the page and waits for its load event.
    #[track_caller]
    pub fn navigate(&self, url: &str) {
        self.drain_events();
        let nav = self.call("Page.navigate", json!({ "url": url }));
        if let Some(err) = nav.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url}: {err}\n{}", self.diagnostics());
        }
        self.wait_event("Page.loadEventFired", LOAD_TIMEOUT, url);
    }

    /// Reloads the page and waits for its load event.
    #[track_caller]
    pub fn reload(&self) {
        self.drain_events();
        self.call("Page.reload", json!({}));
        self.wait_event("Page.loadEventFired", LOAD_TIMEOUT, "reload");
    }

    /// Evaluates `js` in the page, awaiting a returned promise: its JSON value (`Null` for
    /// undefined); panics with the exception when the script throws.
    #[track_caller]
    pub fn eval(&self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("(no description)");
            panic!("script threw: {text}\nscript: {js}\n{}", self.diagnostics());
        }
        r["result"].get("value").cloned().unwrap_or(Value::Null)
    }

    /// Polls `js` every 100 ms until it returns `true`; panics after `limit` with `what` and the
    /// last value.
    #[track_caller]
    pub fn wait_for(&self, js: &str, limit: Duration, what: &str) {
        let start = Instant::now();
        loop {
            let v = self.eval(js);
            if v == Value::Bool(true) {
                return;
            }
            if start.elapsed() >= limit {
                panic!(
                    "waited {limit:?} for {what}; last value {v}\nscript: {js}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a PNG screenshot of the viewport to `path`, creating its parent directories.
    #[track_caller]
    pub fn screenshot(&self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = shot["data"]
            .as_str()
            .expect("captureScreenshot returns data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("captureScreenshot data is base64");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot directory");
        }
        if let Err(e) = std::fs::write(path, png) {
            panic!("writing {}: {e}", path.display());
        }
    }

    /// The page's console messages and uncaught exceptions so far, for failure messages.
    pub fn console(&self) -> Vec<String> {
        self.console.lock().unwrap().clone()
    }

    /// A command to the browser itself (no session), panicking like `call`.
    #[track_caller]
    fn browser_call(&self, method: &str, params: Value) -> Value {
        self.call_on(None, method, params)
    }

    #[track_caller]
    fn call_on(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.send(session, method, params, CALL_TIMEOUT) {
            Ok(result) => result,
            Err(e) => panic!("CDP {method}: {e}\n{}", self.diagnostics()),
        }
    }

    fn send(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        match self.pending.lock().unwrap().as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err("Chromium has closed the pipe".into()),
        };
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("a command serializes");
        bytes.push(0);
        if let Err(e) = self.writer.lock().unwrap().write_all(&bytes) {
            self.forget(id);
            return Err(format!("writing to Chromium: {e}"));
        }
        match rx.recv_timeout(timeout) {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(format!("error {error}")),
            Err(RecvTimeoutError::Timeout) => {
                self.forget(id);
                Err(format!("no reply in {timeout:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => Err("Chromium closed the pipe".into()),
        }
    }

    fn forget(&self, id: u64) {
        if let Some(p) = self.pending.lock().unwrap().as_mut() {
            p.remove(&id);
        }
    }

    /// Drops queued events, so that a wait only sees what follows the next command.
    fn drain_events(&self) {
        while self.events.lock().unwrap().try_recv().is_ok() {}
    }

    #[track_caller]
    fn wait_event(&self, method: &str, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        let events = self.events.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(e) if e["method"] == method && e["sessionId"] == self.session.as_str() => {
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "waiting {limit:?} for {method} ({what}): {e}\n{}",
                    self.diagnostics()
                ),
            }
        }
    }

    /// The console so far and the end of Chromium's own log, less its complaints that there is
    /// no D-Bus (there is none in test containers, and they fill the log).
    fn diagnostics(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines = log.lines().filter(|l| !l.contains(":ERROR:dbus/"));
        let tail: Vec<&str> = lines.rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "page console:\n  {}\nChromium log (end):\n  {}",
            self.console().join("\n  "),
            tail.join("\n  ")
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A clean shutdown first, so that Chromium's helper processes go with it; then make sure.
        let _ = self.send(None, "Browser.close", json!({}), Duration::from_secs(5));
        if let Ok(done) = self.reader_done.get_mut() {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits Chromium's output on NUL: replies go to their waiting command, console events to the
/// console list, other events to the queue. On EOF every waiting command is released.
fn read_messages(
    pipe: PipeReader,
    pending: &Pending,
    console: &Mutex<Vec<String>>,
    events: &mpsc::Sender<Value>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(0, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&0) {
            buf.pop();
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        if let Some(id) = msg["id"].as_u64() {
            let waiter = pending.lock().unwrap().as_mut().and_then(|p| p.remove(&id));
            if let Some(tx) = waiter {
                let reply = match msg.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = tx.send(reply);
            }
        } else if let Some(line) = console_line(&msg) {
            console.lock().unwrap().push(line);
        } else {
            let _ = events.send(msg);
        }
    }
    pending.lock().unwrap().take();
}

/// "level: args" for a console call, "uncaught: description" for an exception, else `None`.
fn console_line(msg: &Value) -> Option<String> {
    let params = &msg["params"];
    match msg["method"].as_str()? {
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| match &a["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => a["description"]
                        .as_str()
                        .or_else(|| a["type"].as_str())
                        .unwrap_or("?")
                        .to_string(),
                    v => v.to_string(),
                })
                .collect();
            Some(format!(
                "{}: {}",
                params["type"].as_str().unwrap_or("log"),
                args.join(" ")
            ))
        }
        "Runtime.exceptionThrown" => {
            let ex = &params["exceptionDetails"];
            let text = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("(no description)");
            Some(format!("uncaught: {text}"))
        }
        _ => None,
    }
}

/// CLIP_CLUSTER_CHROMIUM, else the first of the usual names on PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLIP_CLUSTER_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

const F_DUPFD: i32 = 0;

extern "C" {
    fn dup2(old: i32, new: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn close(fd: i32) -> i32;
}

#[test]
fn chromium_renders_a_page_and_runs_its_script() {
    let Some(b) = Browser::launch("chromium_renders_a_page_and_runs_its_script") else {
        return;
    };
    let html = r#"<!doctype html><title>cdp</title>
        <button id="go" onclick="document.getElementById('out').textContent = 'clicked ' + (40 + 2)">go</button>
        <div id="out"></div>
        <script>console.log('page', 'ready', 7)</script>"#;
    b.navigate(&format!(
        "data:text/html;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(html)
    ));
    b.eval("document.getElementById('go').click()");
    b.wait_for(
        "document.getElementById('out').textContent === 'clicked 42'",
        Duration::from_secs(5),
        "the button's text",
    );
    assert_eq!(b.eval("1+2"), json!(3));
    assert_eq!(b.eval("Promise.resolve('later')"), json!("later"));
    assert_eq!(b.eval("undefined"), Value::Null);

    let thrown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.eval("throw new Error('boom')")
    }));
    let msg = thrown.expect_err("a throwing script panics");
    let msg = msg.downcast_ref::<String>().expect("a formatted panic");
    assert!(msg.contains("Error: boom"), "{msg}");

    b.eval("console.warn('from eval')");
    // The timer that resolves the promise runs after the one that throws, so the exception's
    // event is in before the reply.
    b.eval(
        "setTimeout(() => { throw new Error('late') }); \
         new Promise(done => setTimeout(done, 10))",
    );
    let console = b.console();
    for line in [
        "log: page ready 7",
        "warning: from eval",
        "uncaught: Error: late",
    ] {
        assert!(
            console.iter().any(|c| c.starts_with(line)),
            "{line} in {console:?}"
        );
    }

    b.reload();
    assert_eq!(
        b.eval("document.getElementById('out').textContent"),
        json!("")
    );

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cdp-selftest.png");
    b.screenshot(&path);
    let png = std::fs::read(&path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (1280, 900), "the viewport's size");
}
