//! End to end: `dmae serve` on 127.0.0.1 (a free port) with a small checkpoint made here.
//!
//! - `serve_page_in_headless_chromium` drives the page in Debian's headless Chromium through the
//!   Chrome DevTools Protocol over a pipe (`--remote-debugging-pipe`: JSON messages ended by a NUL
//!   byte on file descriptors 3 and 4; no websocket, no port, no extra crate). The page loads, a
//!   mask is drawn with mouse drags, DDIM with 10 steps streams its 10 steps and the result
//!   appears; a bad upload shows its message on the page and later requests still succeed. It
//!   saves a screenshot to `target/tmp/serve/serve.png` (and to `$DMAE_SCREENSHOT` when set).
//!   Without Chromium it is skipped with a message, unless `DMAE_REQUIRE_CHROMIUM` is set (CI
//!   sets it), in which case it fails. `DMAE_SERVE_CHECKPOINT=FILE` serves a trained checkpoint
//!   instead of the untrained one (how docs/serve.png is made).
//! - `serve_answers_busy_too_large_and_keeps_serving` speaks HTTP directly: a second job while
//!   one runs gets 503 "busy", an oversized upload 413, and once the first client goes away its
//!   run stops and the next request succeeds.
//! - `serve_video_clips_as_frames`: a video checkpoint's clips are shown as frames side by side,
//!   uploads are refused with a message, and a drawn tube mask samples every frame.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use candle_core::Device;
use dmae_models::{DiffMae, ModelConfig};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve")
}

/// An untrained DiffMAE for 64x64 RGB images (8x8 patches): small and fast, and its step
/// images (16 KB of base64 each) are large enough that a client that does not read fills the
/// socket buffers within a DDPM run, which is what makes the busy check deterministic.
fn checkpoint() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = root();
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = ModelConfig::mnist();
        c.image_size = [64, 64];
        c.in_channels = 3;
        c.patch_size = 8;
        c.encoder.dim = 32;
        c.encoder.depth = 2;
        c.encoder.heads = 2;
        c.decoder.dim = 16;
        c.decoder.depth = 2;
        c.decoder.heads = 2;
        c.decoder.time_embed_dim = 16;
        let path = dir.join("rgb64.safetensors");
        DiffMae::new(c, 5, &Device::Cpu)
            .unwrap()
            .save(&path)
            .unwrap();
        path
    })
}

/// A running `dmae serve`, stopped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(checkpoint: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dmae"))
            .arg("serve")
            .arg("--checkpoint")
            .arg(checkpoint)
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start dmae serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            // Forward every line (the test's output shows the server's log), the address first.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[serve] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("dmae serve did not print its address within 60 s");
            if let Some(rest) = line.strip_prefix("listening on http://127.0.0.1:") {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- HTTP by hand

/// Sends one request (`Connection: close`) and returns the open stream after the request.
fn send_request(port: u16, method: &str, path: &str, headers: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    s.write_all(body).unwrap();
    s
}

/// A whole response: status and body text (de-chunked when chunked).
fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let headers = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    let mut s = send_request(port, method, path, &headers, body.as_bytes());
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn centre_mask(rows: usize, cols: usize) -> Vec<bool> {
    (0..rows * cols)
        .map(|i| (1..rows - 1).contains(&(i / cols)) && (1..cols - 1).contains(&(i % cols)))
        .collect()
}

#[test]
fn serve_answers_busy_too_large_and_keeps_serving() {
    let server = Server::start(checkpoint(), &["--queue", "0", "--max-upload-mib", "1"]);
    let port = server.port;
    let (status, info) = request(port, "GET", "/api/info", "");
    assert_eq!(status, 200, "{info}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["model"]["grid"], json!([8, 8]));
    let mask = centre_mask(8, 8);
    let job = |sampler: &str, steps: usize| {
        json!({ "input": "val-0", "mask": mask, "sampler": sampler, "steps": steps, "seed": 1 })
            .to_string()
    };

    // A DDPM run (1000 steps of 16 KB each) whose client reads only its first events: the
    // socket buffers fill and the run waits for the client, so it is surely still running.
    let ddpm = job("ddpm", 0);
    let headers = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        ddpm.len()
    );
    let mut first = send_request(port, "POST", "/api/inpaint", &headers, ddpm.as_bytes());
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: step") {
        let n = first.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before its first step");
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(head.contains("\"steps\":1000"), "{head}");

    let (status, body) = request(port, "POST", "/api/inpaint", &job("ddim", 10));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("busy"), "{body}");

    // Bodies over the limit are refused from their announced length, before they are read.
    let mut big = send_request(
        port,
        "POST",
        "/api/upload",
        "Content-Type: image/png\r\nContent-Length: 2097152\r\n",
        &[],
    );
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("at most 1.0 MiB"), "{answer}");

    // Bad JSON and a bad mask are answered, not fatal.
    let (status, body) = request(port, "POST", "/api/inpaint", "{not json");
    assert_eq!(status, 400, "{body}");
    let (status, body) = request(
        port,
        "POST",
        "/api/inpaint",
        &json!({ "input": "val-0", "mask": [true], "sampler": "ddim" }).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("64 values"), "{body}");

    // The first client goes away: its run stops at its next step and the worker is free again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = request(port, "POST", "/api/inpaint", &job("ddim", 10));
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "still busy after 60 s: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(body.matches("event: step").count(), 10, "{body}");
    let done = body
        .split("event: done\ndata: ")
        .nth(1)
        .expect("no done event");
    let done: Value = serde_json::from_str(done.lines().next().unwrap()).unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(done["result_png"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    assert_eq!(done["trajectory_t"][0], json!(999));

    // At temperature 0 DDIM (eta 0) draws no noise: the seed no longer changes the picture. A
    // negative temperature is refused.
    let cold = |seed: u64| {
        let job = json!({ "input": "val-0", "mask": mask, "sampler": "ddim", "steps": 3,
                          "seed": seed, "temperature": 0.0 })
        .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let body = loop {
            let (status, body) = request(port, "POST", "/api/inpaint", &job);
            if status == 200 {
                break body;
            }
            assert_eq!(status, 503, "{body}");
            assert!(Instant::now() < deadline, "still busy after 60 s: {body}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(body.contains("temperature 0"), "{body}");
        let done = body
            .split("event: done\ndata: ")
            .nth(1)
            .expect("no done event");
        let done: Value = serde_json::from_str(done.lines().next().unwrap()).unwrap();
        done["result_png"].as_str().unwrap().to_owned()
    };
    assert_eq!(cold(1), cold(2));
    let (status, body) = request(
        port,
        "POST",
        "/api/inpaint",
        &json!({ "input": "val-0", "mask": mask, "sampler": "ddim", "temperature": -1.0 })
            .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("temperature"), "{body}");
}

/// An untrained video DiffMAE: 4 frames of 32x32 grey, 8x8 patches, tubelets of 2 frames.
fn video_checkpoint() -> PathBuf {
    let dir = root();
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = ModelConfig::mnist();
    c.image_size = [32, 32];
    c.patch_size = 8;
    c.num_frames = 4;
    c.tubelet = 2;
    c.encoder.dim = 32;
    c.encoder.depth = 1;
    c.encoder.heads = 2;
    c.decoder.dim = 16;
    c.decoder.depth = 1;
    c.decoder.heads = 2;
    c.decoder.time_embed_dim = 16;
    let path = dir.join("video.safetensors");
    DiffMae::new(c, 6, &Device::Cpu)
        .unwrap()
        .save(&path)
        .unwrap();
    path
}

#[test]
fn serve_video_clips_as_frames() {
    let server = Server::start(
        &video_checkpoint(),
        &["--data", "moving-mnist:frames=4,canvas=32,len=4"],
    );
    let port = server.port;
    let (status, info) = request(port, "GET", "/api/info", "");
    assert_eq!(status, 200, "{info}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["model"]["video"], json!(true));
    assert_eq!(info["model"]["frames"], json!(4));
    assert_eq!(info["model"]["grid"], json!([4, 4]));
    // A clip is shown as its frames side by side.
    let mut s = send_request(port, "GET", "/api/input/val-1.png", "", &[]);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let strip = image::load_from_memory(&raw[at..]).unwrap();
    assert_eq!((strip.width(), strip.height()), (4 * 32, 32));
    // Uploads are single images: a video model says so.
    let png = {
        let mut c = std::io::Cursor::new(Vec::new());
        image::GrayImage::new(32, 32)
            .write_to(&mut c, image::ImageFormat::Png)
            .unwrap();
        c.into_inner()
    };
    let headers = format!(
        "Content-Type: image/png\r\nContent-Length: {}\r\n",
        png.len()
    );
    let mut s = send_request(port, "POST", "/api/upload", &headers, &png);
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.contains("video model"), "{answer}");
    // A tube (the same 4 patches hidden in every frame), DDIM 3 steps.
    let mask: Vec<bool> = (0..16).map(|i| [5, 6, 9, 10].contains(&i)).collect();
    let job = json!({ "input": "val-1", "mask": mask, "sampler": "ddim", "steps": 3, "seed": 2 });
    let (status, body) = request(port, "POST", "/api/inpaint", &job.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("event: step").count(), 3, "{body}");
    let step: Value = serde_json::from_str(
        body.split("event: step\ndata: ")
            .nth(1)
            .and_then(|d| d.lines().next())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(step["image"]["frames"], json!(4), "{step}");
    assert!(body.contains("event: done"), "{body}");
}

// ---------------------------------------------------------------- Chromium over CDP

fn chromium() -> Option<PathBuf> {
    let named = std::env::var_os("DMAE_CHROMIUM").map(PathBuf::from);
    let candidates = named.into_iter().chain(
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from),
    );
    candidates.into_iter().find(|p| p.is_file())
}

/// Headless Chromium with one page, driven over `--remote-debugging-pipe`.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next: u64,
    session: Option<String>,
    events: Vec<Value>,
}

impl Browser {
    fn launch(chromium: &Path, dir: &Path) -> Self {
        let profile = dir.join("chromium-profile");
        let _ = std::fs::remove_dir_all(&profile);
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        // The pipe protocol reads commands on fd 3 and writes answers on fd 4: bash moves our
        // stdin/stdout pipes there before it becomes Chromium.
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(r#"exec 3<&0 4>&1 </dev/null >&2; exec "$@""#)
            .arg("bash")
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("cannot start chromium");
        let to = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = channel();
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match out.read_until(0, &mut msg) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    msg.pop();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut b = Self {
            child,
            to,
            from,
            next: 0,
            session: None,
            events: Vec::new(),
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        b.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// Sends a command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        self.to.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method} within 60 s"));
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    /// Evaluates `expr` in the page (awaiting promises) and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true; fails with `what` and the page's status after `secs`.
    fn wait_for(&mut self, expr: &str, secs: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        // While the page is still loading `document.body` may be null: that is "not yet".
        let guarded =
            format!("(() => {{ try {{ return {expr}; }} catch (e) {{ return false; }} }})()");
        while self.eval(&guarded) != json!(true) {
            if Instant::now() > deadline {
                let status = self.eval("JSON.stringify(window.dmaeStatus && dmaeStatus())");
                panic!("{what}: not within {secs} s; page status {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status(&mut self) -> Value {
        self.eval("dmaeStatus()")
    }

    /// The centre of element `id` in page pixels.
    fn centre_of(&mut self, id: &str) -> (f64, f64) {
        let r = self.eval(&format!(
            "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ));
        (r[0].as_f64().unwrap(), r[1].as_f64().unwrap())
    }

    fn mouse(&mut self, kind: &str, (x, y): (f64, f64), pressed: bool) {
        self.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": "left",
                    "buttons": if pressed { 1 } else { 0 }, "clickCount": 1 }),
        );
    }

    fn click(&mut self, id: &str) {
        self.eval(&format!(
            "document.getElementById('{id}').scrollIntoView({{block: 'center'}})"
        ));
        let at = self.centre_of(id);
        self.mouse("mouseMoved", at, false);
        self.mouse("mousePressed", at, true);
        self.mouse("mouseReleased", at, false);
    }

    fn upload(&mut self, file: &Path) {
        let doc = self.call("DOM.getDocument", json!({}));
        let node = self.call(
            "DOM.querySelector",
            json!({ "nodeId": doc["root"]["nodeId"], "selector": "#file" }),
        );
        self.call(
            "DOM.setFileInputFiles",
            json!({ "nodeId": node["nodeId"], "files": [file.to_str().unwrap()] }),
        );
    }

    /// A PNG of the whole page.
    fn screenshot(&mut self, path: &Path) {
        self.eval("window.scrollTo(0, 0)");
        let height = self
            .eval("document.documentElement.scrollHeight")
            .as_f64()
            .unwrap();
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": height.ceil() as u64, "deviceScaleFactor": 1, "mobile": false }),
        );
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Patch `(row, col)` of the mask editor in page pixels.
fn patch_centre(b: &mut Browser, row: usize, col: usize) -> (f64, f64) {
    let r = b.eval(
        "(() => { const e = document.getElementById('editor'); const r = e.getBoundingClientRect(); \
         return [r.left, r.top, r.width / e.width, e.width, e.height]; })()",
    );
    let (left, top, css) = (
        r[0].as_f64().unwrap(),
        r[1].as_f64().unwrap(),
        r[2].as_f64().unwrap(),
    );
    let info = b.eval("S.info.model");
    let rows = info["grid"][0].as_f64().unwrap();
    // Images: the canvas is the image, so a patch is height / rows canvas pixels.
    let patch = r[4].as_f64().unwrap() / rows * css;
    (
        left + (col as f64 + 0.5) * patch,
        top + (row as f64 + 0.5) * patch,
    )
}

#[test]
fn serve_page_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        let required =
            std::env::var("DMAE_REQUIRE_CHROMIUM").is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "DMAE_REQUIRE_CHROMIUM is set but no chromium was found (apt-get install chromium, or \
             DMAE_CHROMIUM=/path/to/chromium)"
        );
        eprintln!(
            "SKIPPED serve_page_in_headless_chromium: no chromium at /usr/bin/chromium (apt-get \
             install chromium; set DMAE_REQUIRE_CHROMIUM=1 to make this a failure)"
        );
        return;
    };
    let dir = root();
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = std::env::var_os("DMAE_SERVE_CHECKPOINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| checkpoint().to_path_buf());
    let server = Server::start(&ckpt, &[]);
    let mut b = Browser::launch(&chromium, &dir);
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    );
    b.call("Page.navigate", json!({ "url": server.url() }));

    // The page loads: model, gallery, the first sample and a center mask.
    b.wait_for(
        "document.body.dataset.state === 'ready'",
        60,
        "the page is ready",
    );
    assert_eq!(b.status()["input"], json!("val-0"));
    let grid = b.eval("S.info.model.grid");
    let (rows, cols) = (
        grid[0].as_u64().unwrap() as usize,
        grid[1].as_u64().unwrap() as usize,
    );

    // A mask drawn with the mouse: a drag over row 1 from column 1 to cols-2, then down the
    // last of those columns to row rows-2; a click on the first patch shows it again.
    b.click("mask-clear");
    b.wait_for("dmaeStatus().masked === 0", 10, "the mask is cleared");
    let mut path = Vec::new();
    path.extend((1..cols - 1).map(|c| (1, c)));
    path.extend((2..rows - 1).map(|r| (r, cols - 2)));
    let at = patch_centre(&mut b, path[0].0, path[0].1);
    b.mouse("mousePressed", at, true);
    for &(r, c) in &path[1..] {
        let at = patch_centre(&mut b, r, c);
        b.mouse("mouseMoved", at, true);
    }
    let last = path[path.len() - 1];
    let at = patch_centre(&mut b, last.0, last.1);
    b.mouse("mouseReleased", at, false);
    let drawn = b.eval("S.mask.map((m, i) => m ? i : -1).filter(i => i >= 0)");
    let want: Vec<usize> = {
        let mut v: Vec<usize> = path.iter().map(|&(r, c)| r * cols + c).collect();
        v.sort();
        v
    };
    assert_eq!(drawn, json!(want), "the drawn mask");
    let at = patch_centre(&mut b, path[0].0, path[0].1);
    b.mouse("mousePressed", at, true);
    b.mouse("mouseReleased", at, false);
    assert_eq!(
        b.status()["masked"],
        json!(want.len() - 1),
        "a click toggles"
    );

    // DDIM with 10 steps: every step streams in, then the result and the trajectory strip.
    b.eval("document.querySelector('input[name=sampler][value=ddim]').checked = true");
    b.eval("document.getElementById('steps').value = '10'");
    b.click("inpaint");
    b.wait_for(
        "document.body.dataset.state === 'done'",
        120,
        "DDIM 10 steps",
    );
    let s = b.status();
    assert_eq!(
        (s["expected"].clone(), s["received"].clone()),
        (json!(10), json!(10)),
        "{s}"
    );
    assert_eq!(s["resultReady"], json!(true), "{s}");
    b.wait_for("dmaeStatus().trajectoryLoaded", 10, "the trajectory strip");
    // The live panel shows the last step, t = 0.
    let caption = b.eval("document.getElementById('live-caption').textContent");
    assert!(caption.as_str().unwrap().contains("t = 0"), "{caption}");

    // A bad upload: its message shows on the page.
    let bad = dir.join("not-an-image.png");
    std::fs::write(&bad, "this is text, not a picture\n").unwrap();
    b.upload(&bad);
    b.wait_for(
        "dmaeStatus().inputNote.includes('not an image')",
        30,
        "the bad upload's message",
    );
    assert_eq!(
        b.status()["input"],
        json!("val-0"),
        "the input is unchanged"
    );

    // A good upload of another size and colour is fitted, and a second run on it succeeds.
    let good = dir.join("ring.png");
    image::RgbImage::from_fn(90, 70, |x, y| {
        let (dx, dy) = (x as f64 - 45.0, y as f64 - 35.0);
        let r = (dx * dx + dy * dy).sqrt();
        if (18.0..28.0).contains(&r) {
            image::Rgb([250, 200, 40])
        } else {
            image::Rgb([20, 30, 90])
        }
    })
    .save(&good)
    .unwrap();
    b.upload(&good);
    b.wait_for(
        "dmaeStatus().input.startsWith('upload-')",
        30,
        "the good upload",
    );
    let note = b.status()["inputNote"].clone();
    assert!(note.as_str().unwrap().contains("90x70"), "{note}");
    b.click("inpaint");
    b.wait_for(
        "document.body.dataset.state === 'done'",
        120,
        "the run on the upload",
    );
    assert_eq!(b.status()["received"], json!(10));

    // Back to a validation digit for the picture: the page as a person sees it after a run.
    b.eval("document.querySelectorAll('.gallery canvas')[3].click()");
    b.wait_for("dmaeStatus().input === 'val-3'", 30, "selecting val-3");
    b.click("mask-center");
    b.wait_for("dmaeStatus().masked > 0", 10, "the center mask");
    b.click("inpaint");
    b.wait_for(
        "document.body.dataset.state === 'done'",
        120,
        "the third run",
    );
    b.wait_for("dmaeStatus().trajectoryLoaded", 10, "the trajectory strip");
    let shot = dir.join("serve.png");
    b.screenshot(&shot);
    println!("screenshot: {}", shot.display());
    if let Some(copy) = std::env::var_os("DMAE_SCREENSHOT") {
        std::fs::copy(&shot, &copy).unwrap();
    }
    let png = image::open(&shot).unwrap();
    assert!(png.width() == 1280 && png.height() > 600);
}
