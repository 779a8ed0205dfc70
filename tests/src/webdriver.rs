//! A headless Chromium driven through chromedriver (W3C WebDriver: JSON over
//! HTTP), for the console's end-to-end test and its screenshots. Debian's
//! `chromium` and `chromium-driver` packages; `scripts/test.sh` installs them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// `width` × `height` CSS pixels (a desktop window).
    pub fn start(width: u32, height: u32) -> Browser {
        Self::launch(width, height, false)
    }

    /// A session emulating a phone's screen, `width` × `height` CSS pixels
    /// (a desktop window cannot be narrower than 500).
    pub fn phone(width: u32, height: u32) -> Browser {
        Self::launch(width, height, true)
    }

    fn launch(width: u32, height: u32, phone: bool) -> Browser {
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/test.sh installs it)");
        let stdout = driver.stdout.take().expect("chromedriver stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|r| r.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = tx.send(p);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromedriver said which port it listens on");
        let profile = tempfile::tempdir().expect("tempdir");
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let mut options = json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--disable-background-networking",
                    "--disable-extensions", "--no-first-run", "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
        });
        if phone {
            options["mobileEmulation"] = json!({"deviceMetrics": {
                "width": width, "height": height, "pixelRatio": 1.0, "touch": true, "mobile": true,
            }});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver command; returns its `value`, panicking on an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self.try_call(method, path, body);
        if let Some(err) = v.get("error") {
            panic!("WebDriver {method} {path}: {err} {}", v["message"]);
        }
        v
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = if path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to chromedriver");
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .expect("write to chromedriver");
        // Read the head, then exactly the body (chromedriver may keep the
        // connection open whatever the request says).
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read from chromedriver");
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut payload = Vec::new();
        match length {
            Some(n) => {
                payload.resize(n, 0);
                reader
                    .read_exact(&mut payload)
                    .expect("read from chromedriver");
            }
            None => {
                reader
                    .read_to_end(&mut payload)
                    .expect("read from chromedriver");
                if head.contains("transfer-encoding: chunked") {
                    payload = dechunk(&payload);
                }
            }
        }
        let v: Value = serde_json::from_slice(&payload).expect("JSON from chromedriver");
        v.get("value").cloned().unwrap_or(v)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn current_url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self.try_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.get(ELEMENT).and_then(Value::as_str).map(str::to_string)
    }

    /// Finds `css` and clicks it, finding it again if the page replaced it in
    /// between (the console refreshes itself).
    pub fn click_css(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(el) = self.find(css) {
                let v = self.try_call("POST", &format!("/element/{el}/click"), Some(json!({})));
                match v.get("error").and_then(Value::as_str) {
                    None => return,
                    Some("stale element reference") => {}
                    Some(e) => panic!("WebDriver click on {css}: {e} {}", v["message"]),
                }
            }
            assert!(Instant::now() < deadline, "nothing to click at {css}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    pub fn text(&self, element: &str) -> String {
        self.call("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rendered text of the first element matching `css`, read in one
    /// step inside the page, so a console refresh that replaces the element
    /// between finding it and reading it cannot fail the call.
    pub fn text_of(&self, css: &str) -> Option<String> {
        let v = self.call(
            "POST",
            "/execute/sync",
            Some(json!({
                "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                "args": [css],
            })),
        );
        v.as_str().map(|t| t.trim().to_string())
    }

    /// Runs `script` in the page and returns what it returns.
    pub fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Waits until `f` holds or panics after 20 s.
    pub fn wait(&self, what: &str, mut f: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what} (at {})", self.current_url());
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 screenshot")
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
