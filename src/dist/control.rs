//! The rendezvous and control channel of a multi-process run: rank 0 listens on
//! `MASTER_ADDR:MASTER_PORT`, every other rank connects and says who it is and which settings it
//! runs with; rank 0 checks them and answers with the NCCL unique id. The connections stay open:
//!
//! - a rank that stops without saying it is done (it crashed, was killed, or failed with an error
//!   it reported) closes its connection; rank 0 sees it, tells every other rank which rank died and
//!   why, and all of them exit with that message instead of waiting in a collective forever;
//! - a rank that loses rank 0 exits saying so.
//!
//! Messages are one JSON object per line.

use super::env::RankEnv;
use super::nccl::{id_from_hex, id_to_hex, UniqueId};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long ranks wait for each other to arrive (loading the data and model comes first).
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit status of a rank stopped because another rank died (2 is any reported error), so the
/// launcher can tell the cause from the consequences.
pub const EXIT_PEER_DIED: i32 = 3;

/// This rank's end of the control channel.
pub struct Control {
    rank: usize,
    /// Rank 0: the write halves of the connections to ranks 1.. (index r-1). Others: the one to rank 0.
    links: Arc<Mutex<Vec<TcpStream>>>,
    /// Set once this rank finished normally: a closed connection is then no failure.
    done: Arc<AtomicBool>,
}

/// FNV-1a of the settings text, so that launches with different settings refuse to train together.
pub fn settings_hash(text: &str) -> String {
    let h = text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{h:016x}")
}

fn send(stream: &mut TcpStream, msg: &Value) -> std::io::Result<()> {
    stream.write_all(format!("{msg}\n").as_bytes())?;
    stream.flush()
}

fn read_msg(reader: &mut impl BufRead) -> Option<Value> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => serde_json::from_str(line.trim()).ok(),
    }
}

/// Ends this process because another rank died: no collective can complete any more.
fn stop(me: usize, dead: usize, why: &str) -> ! {
    let _ = std::io::stderr().write_all(format!("error: rank {me}: stopping because rank {dead} died ({why})\n").as_bytes());
    std::process::exit(EXIT_PEER_DIED)
}

/// Meets the other ranks; returns the control channel and the NCCL id (rank 0 makes it with
/// `make_id` once everyone has arrived with the same `settings`).
pub fn rendezvous(env: &RankEnv, settings: &str, make_id: impl FnOnce() -> Result<UniqueId>) -> Result<(Control, UniqueId)> {
    let addr = format!("{}:{}", env.master_addr, env.master_port);
    if env.rank == 0 {
        lead(env, &addr, settings, make_id)
    } else {
        follow(env, &addr, settings)
    }
}

fn lead(env: &RankEnv, addr: &str, settings: &str, make_id: impl FnOnce() -> Result<UniqueId>) -> Result<(Control, UniqueId)> {
    let listener = TcpListener::bind(addr).with_context(|| {
        format!("rank 0: cannot listen on MASTER_ADDR:MASTER_PORT = {addr} (is another program, such as torchrun's own store, listening there?)")
    })?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + RENDEZVOUS_TIMEOUT;
    let mut peers: Vec<Option<(TcpStream, BufReader<TcpStream>)>> = (1..env.world).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        let (mut stream, from) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = (1..env.world).filter(|r| peers[r - 1].is_none()).map(|r| r.to_string()).collect();
                    bail!("rank 0: ranks {} did not join within {:?} at {addr}", missing.join(", "), RENDEZVOUS_TIMEOUT);
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e).context(format!("rank 0: accepting a rank at {addr}")),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let hello = read_msg(&mut reader).ok_or_else(|| anyhow!("rank 0: {from} connected but did not say which rank it is"))?;
        let (rank, world, theirs) = (hello["rank"].as_u64(), hello["world"].as_u64(), hello["settings"].as_str().unwrap_or(""));
        let refuse = |stream: &mut TcpStream, why: String| -> Result<()> {
            let _ = send(stream, &json!({ "refused": why }));
            bail!("rank 0: {why}")
        };
        match (rank, world) {
            (Some(r), Some(w)) if w as usize != env.world => {
                refuse(&mut stream, format!("rank {r} was started with WORLD_SIZE={w}, rank 0 with WORLD_SIZE={}", env.world))?
            }
            (Some(r), _) if r == 0 || r as usize >= env.world => {
                refuse(&mut stream, format!("a second rank 0 or a rank {r} out of range joined"))?
            }
            (Some(r), _) if peers[r as usize - 1].is_some() => refuse(&mut stream, format!("rank {r} joined twice"))?,
            (Some(r), _) if theirs != settings => refuse(
                &mut stream,
                format!("rank {r} was started with other training settings than rank 0 (every rank needs the same command line and files)"),
            )?,
            (Some(r), _) => {
                stream.set_read_timeout(None)?;
                peers[r as usize - 1] = Some((stream, reader));
            }
            _ => bail!("rank 0: {from} sent a greeting that is not a rank's"),
        }
    }
    let id = make_id()?;
    let mut links = Vec::new();
    let mut readers = Vec::new();
    for (i, p) in peers.into_iter().enumerate() {
        let (mut stream, reader) = p.expect("every rank joined");
        send(&mut stream, &json!({ "id": id_to_hex(&id) })).with_context(|| format!("rank 0: sending the NCCL id to rank {}", i + 1))?;
        links.push(stream);
        readers.push(reader);
    }
    let control = Control { rank: 0, links: Arc::new(Mutex::new(links)), done: Arc::new(AtomicBool::new(false)) };
    for (i, reader) in readers.into_iter().enumerate() {
        let (links, done) = (control.links.clone(), control.done.clone());
        std::thread::spawn(move || watch_peer(i + 1, reader, links, done));
    }
    Ok((control, id))
}

/// Rank 0's watch over rank `rank`: its messages until it closes the connection.
fn watch_peer(rank: usize, mut reader: BufReader<TcpStream>, links: Arc<Mutex<Vec<TcpStream>>>, done: Arc<AtomicBool>) {
    let mut why = "its process ended without finishing (crashed or killed)".to_string();
    let mut finished = false;
    while let Some(msg) = read_msg(&mut reader) {
        if let Some(e) = msg["failed"].as_str() {
            why = format!("it failed: {e}");
        }
        if msg["done"].as_bool() == Some(true) {
            finished = true;
        }
    }
    if finished || done.load(Ordering::SeqCst) {
        return;
    }
    if let Ok(mut links) = links.lock() {
        for (i, l) in links.iter_mut().enumerate() {
            if i + 1 != rank {
                let _ = send(l, &json!({ "dead": rank, "why": why }));
            }
        }
    }
    stop(0, rank, &why)
}

fn follow(env: &RankEnv, addr: &str, settings: &str) -> Result<(Control, UniqueId)> {
    let deadline = Instant::now() + RENDEZVOUS_TIMEOUT;
    let mut stream = loop {
        let attempt = addr.to_socket_addrs().map_err(anyhow::Error::from).and_then(|mut a| {
            let a = a.next().ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
            Ok(TcpStream::connect_timeout(&a, Duration::from_secs(5))?)
        });
        match attempt {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("rank {}: rank 0 did not answer at MASTER_ADDR:MASTER_PORT = {addr}", env.rank))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    send(&mut stream, &json!({ "rank": env.rank, "world": env.world, "settings": settings }))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let answer = read_msg(&mut reader).ok_or_else(|| anyhow!("rank {}: rank 0 closed the connection during the rendezvous", env.rank))?;
    if let Some(why) = answer["refused"].as_str() {
        bail!("rank {}: rank 0 refused this rank: {why}", env.rank);
    }
    let id = id_from_hex(answer["id"].as_str().unwrap_or(""))?;
    let control = Control { rank: env.rank, links: Arc::new(Mutex::new(vec![stream])), done: Arc::new(AtomicBool::new(false)) };
    let (me, done) = (env.rank, control.done.clone());
    std::thread::spawn(move || {
        let mut dead: Option<(usize, String)> = None;
        while let Some(msg) = read_msg(&mut reader) {
            if let Some(r) = msg["dead"].as_u64() {
                dead = Some((r as usize, msg["why"].as_str().unwrap_or("unknown").to_string()));
                break;
            }
            if msg["done"].as_bool() == Some(true) {
                return;
            }
        }
        if done.load(Ordering::SeqCst) {
            return;
        }
        let (r, why) = dead.unwrap_or((0, "its connection closed: the process ended (crashed or killed)".into()));
        stop(me, r, &why)
    });
    Ok((control, id))
}

impl Control {
    /// Says this rank finished normally, so closing its connection is no failure.
    pub fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        if let Ok(mut links) = self.links.lock() {
            for l in links.iter_mut() {
                let _ = send(l, &json!({ "done": true }));
            }
        }
    }

    /// Tells the others why this rank is about to exit with an error (best effort: the closed
    /// connection says that it died in any case).
    pub fn report_failure(&self, error: &str) {
        if let Ok(mut links) = self.links.lock() {
            for l in links.iter_mut() {
                let msg =
                    if self.rank == 0 { json!({ "dead": 0, "why": format!("it failed: {error}") }) } else { json!({ "failed": error }) };
                let _ = send(l, &msg);
            }
        }
    }
}
