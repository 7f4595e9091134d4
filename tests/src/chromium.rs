//! A headless Chromium for the report and status page tests: opens a local
//! file or a URL and reports
//! every network request the page made, its console errors (console API
//! errors, error log entries such as failed loads, uncaught exceptions), the
//! DOM after load, and a PNG screenshot.
//!
//! Chromium (`chromium-headless-shell`, else `chromium`; installed by
//! `scripts/install-test-deps.sh`) is driven over the DevTools protocol on
//! `--remote-debugging-port=0`, through the small WebSocket client below (text
//! frames only: all the protocol uses), so the checks see what the browser
//! did rather than what a page claims. One browser per [`Chromium::open`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::wait::scaled;

/// What a page did while it loaded.
#[derive(Debug, Clone, Default)]
pub struct PageReport {
    /// Every URL the page requested, in order (the page itself first).
    pub requests: Vec<String>,
    /// Console errors, error log entries and uncaught exceptions, as text.
    pub console_errors: Vec<String>,
    /// `document.documentElement.outerHTML` after load.
    pub dom: String,
    /// Evaluated `probe` expression (see [`Chromium::open`]), as JSON.
    pub probe: Value,
}

/// How [`Chromium::open_url`] loads a page.
#[derive(Debug, Clone)]
pub struct PageOptions<'a> {
    /// Scripts evaluated in the page, in order, after it loaded and settled.
    pub inject: &'a [String],
    /// A JavaScript expression evaluated last (a promise is awaited); its
    /// value is [`PageReport::probe`].
    pub probe: &'a str,
    /// Where the PNG screenshot of the viewport is written.
    pub screenshot: &'a Path,
    /// How long to wait after the load event for late requests.
    pub settle: Duration,
    /// The viewport's width in CSS pixels (the window's 1280 when `None`).
    pub width: Option<u32>,
}

/// The browser binary: `HUBWATCH_CHROMIUM`, else the first of
/// `chromium-headless-shell` and `chromium` on `PATH`.
pub fn browser() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HUBWATCH_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium-headless-shell", "chromium"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("no chromium-headless-shell or chromium on PATH: run scripts/install-test-deps.sh")
}

/// A running headless browser (killed on drop).
pub struct Chromium {
    child: Child,
    socket: Socket,
    next_id: u64,
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts a browser, opens `page` (a local file) in a new tab, waits for
    /// its load event and then `settle` for late requests, evaluates `probe`
    /// (a JavaScript expression; `null` to skip) and writes a screenshot of
    /// the viewport to `screenshot`.
    pub fn open(
        page: &Path,
        probe: &str,
        screenshot: &Path,
        settle: Duration,
    ) -> anyhow::Result<PageReport> {
        let url = format!("file://{}", page.canonicalize()?.display());
        Self::open_url(
            &url,
            &PageOptions {
                inject: &[],
                probe,
                screenshot,
                settle,
                width: None,
            },
        )
    }

    /// Like [`Chromium::open`] for any URL (e.g. a page the collector
    /// serves), with [`PageOptions`]: scripts evaluated in the page after
    /// load (e.g. axe-core), a probe whose promise is awaited, and a
    /// viewport width (640 CSS pixels is a 1280-pixel window at 200 % zoom).
    pub fn open_url(url: &str, options: &PageOptions<'_>) -> anyhow::Result<PageReport> {
        let mut browser = Self::start()?;
        let report = browser.load(url, options);
        browser.close();
        report
    }

    fn start() -> anyhow::Result<Self> {
        let binary = browser()?;
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(&binary)
            .args([
                "--headless",
                // Root in a container has no user namespace sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("chromium stderr")?;
        // The browser prints its endpoint on stderr; read it in a thread so a
        // silent browser times out instead of blocking.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_string());
                    sent = true;
                }
            }
        });
        let url = match rx.recv_timeout(scaled(Duration::from_secs(30))) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("chromium printed no DevTools endpoint");
            }
        };
        let socket = Socket::connect(&url)?;
        Ok(Self {
            child,
            socket,
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        })
    }

    fn load(&mut self, url: &str, options: &PageOptions<'_>) -> anyhow::Result<PageReport> {
        let PageOptions {
            inject,
            probe,
            screenshot,
            settle,
            width,
        } = *options;
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        let session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        let s = Some(session.as_str());
        for domain in ["Network", "Runtime", "Log", "Page"] {
            self.call(s, &format!("{domain}.enable"), json!({}))?;
        }
        if let Some(width) = width {
            self.call(
                s,
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
            )?;
        }
        self.events.clear();
        self.call(s, "Page.navigate", json!({"url": url}))?;
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        while !self
            .events
            .iter()
            .any(|e| e["method"] == "Page.loadEventFired" && e["sessionId"] == session)
        {
            if Instant::now() > deadline {
                bail!("the page did not load in time");
            }
            self.pump(Duration::from_millis(200))?;
        }
        let settle_until = Instant::now() + settle;
        while Instant::now() < settle_until {
            self.pump(Duration::from_millis(100))?;
        }
        for script in inject {
            let done = self.call(
                s,
                "Runtime.evaluate",
                json!({"expression": script, "returnByValue": true}),
            )?;
            if let Some(details) = done.get("exceptionDetails") {
                bail!("an injected script failed: {details}");
            }
        }
        let dom = self.call(
            s,
            "Runtime.evaluate",
            json!({"expression": "document.documentElement.outerHTML", "returnByValue": true}),
        )?;
        let probe = self.call(
            s,
            "Runtime.evaluate",
            json!({"expression": probe, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(details) = probe.get("exceptionDetails") {
            bail!("the probe failed: {details}");
        }
        let shot = self.call(s, "Page.captureScreenshot", json!({"format": "png"}))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("screenshot data")?)
            .context("screenshot base64")?;
        std::fs::write(screenshot, png)
            .with_context(|| format!("writing {}", screenshot.display()))?;

        let mut report = PageReport {
            dom: dom["result"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            probe: probe["result"]["value"].clone(),
            ..PageReport::default()
        };
        for event in &self.events {
            if event["sessionId"] != session {
                continue;
            }
            let params = &event["params"];
            match event["method"].as_str().unwrap_or_default() {
                "Network.requestWillBeSent" => {
                    if let Some(url) = params["request"]["url"].as_str() {
                        report.requests.push(url.to_string());
                    }
                }
                "Runtime.consoleAPICalled" if params["type"] == "error" => {
                    let text: Vec<String> = params["args"]
                        .as_array()
                        .map(|args| {
                            args.iter()
                                .map(|a| match (&a["value"], &a["description"]) {
                                    (Value::String(text), _) => text.clone(),
                                    (Value::Null, Value::String(text)) => text.clone(),
                                    (value, _) => value.to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    report
                        .console_errors
                        .push(format!("console.error: {}", text.join(" ")));
                }
                "Log.entryAdded" if params["entry"]["level"] == "error" => {
                    report.console_errors.push(format!(
                        "log: {} {}",
                        params["entry"]["text"].as_str().unwrap_or_default(),
                        params["entry"]["url"].as_str().unwrap_or_default()
                    ));
                }
                "Runtime.exceptionThrown" => {
                    let details = &params["exceptionDetails"];
                    report.console_errors.push(format!(
                        "exception: {} {}",
                        details["text"].as_str().unwrap_or_default(),
                        details["exception"]["description"]
                            .as_str()
                            .unwrap_or_default()
                    ));
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// Sends `method` and returns its result, keeping events that arrive
    /// meanwhile.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket.send(&message.to_string())?;
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        loop {
            if Instant::now() > deadline {
                bail!("no answer to {method}");
            }
            let Some(text) = self.socket.receive(Duration::from_millis(500))? else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).context("DevTools message")?;
            if value["id"] == json!(id) {
                if let Some(error) = value.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(value["result"].clone());
            }
            if value.get("method").is_some() {
                self.events.push(value);
            }
        }
    }

    /// Reads events for up to `wait`.
    fn pump(&mut self, wait: Duration) -> anyhow::Result<()> {
        if let Some(text) = self.socket.receive(wait)? {
            let value: Value = serde_json::from_str(&text).context("DevTools message")?;
            if value.get("method").is_some() {
                self.events.push(value);
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        self.next_id += 1;
        let _ = self
            .socket
            .send(&json!({"id": self.next_id, "method": "Browser.close"}).to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal WebSocket client (RFC 6455) for the DevTools endpoint: text
/// messages, masked client frames, fragmented server messages, pings
/// answered.
struct Socket {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Socket {
    fn connect(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("ws://").context("ws:// URL")?;
        let (host, path) = rest.split_once('/').context("URL path")?;
        let mut stream = TcpStream::connect(host).with_context(|| format!("connecting {host}"))?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        stream.set_read_timeout(Some(scaled(Duration::from_secs(10))))?;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("DevTools closed during the handshake");
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("WebSocket handshake refused: {head}");
        }
        buffer.drain(..end);
        Ok(Self { stream, buffer })
    }

    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.frame(0x1, text.as_bytes())
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::random();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)?;
        Ok(())
    }

    /// The next whole text message, or `None` if none arrived within `wait`.
    fn receive(&mut self, wait: Duration) -> anyhow::Result<Option<String>> {
        let deadline = Instant::now() + wait;
        let mut message: Vec<u8> = Vec::new();
        loop {
            if let Some((fin, opcode, payload)) = self.parse()? {
                match opcode {
                    0x0..=0x2 => {
                        message.extend_from_slice(&payload);
                        if fin {
                            return Ok(Some(String::from_utf8(message)?));
                        }
                    }
                    0x8 => bail!("DevTools closed the connection"),
                    0x9 => self.frame(0xA, &payload)?,
                    _ => {}
                }
                continue;
            }
            let now = Instant::now();
            // Mid-message, wait for the rest regardless of `wait`.
            if now >= deadline && message.is_empty() {
                return Ok(None);
            }
            let left = deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(50));
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("DevTools connection closed"),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One whole frame from the buffer, if it holds one.
    fn parse(&mut self) -> anyhow::Result<Option<(bool, u8, Vec<u8>)>> {
        let b = &self.buffer;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&b[2..10]);
                (usize::try_from(u64::from_be_bytes(bytes))?, 10)
            }
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            at += 4;
            Some([b[at - 4], b[at - 3], b[at - 2], b[at - 1]])
        } else {
            None
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(mask) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        self.buffer.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }
}
