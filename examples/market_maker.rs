//! A market maker on two simulated feeds.
//!
//! ```text
//! cargo run --release --example market_maker -- --seconds 5
//! ```
//!
//! - `orderbook`: a passthrough source; a simulated exchange feed pushes a new top of book
//!   every millisecond.
//! - `pricing`: a polling source; a simulated pricing model is asked for a fair value every
//!   10 ms.
//! - The reactor and graph are declared with `#[reactor]` and `#[computation_graph]`:
//!   `decision(orderbook, pricing) => { Trade -> execute, NoAction -> audit }`; only the
//!   taken branch runs.
//!
//! Every second it prints fires, decisions and book-to-result latency percentiles (from the
//! instant a book update was pushed to the completion of the firing that consumed it), and
//! exits 0 after `--seconds N` (default 5) with a final summary.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cloacina::prelude::*;
use serde::{Deserialize, Serialize};

/// Top of book from the exchange feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderBook {
    best_bid: f64,
    best_ask: f64,
    /// When the feed pushed it (ns since start).
    sent_ns: u64,
}

/// Fair value from the pricing model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pricing {
    fair_value: f64,
}

/// What to do with the current book.
pub enum Decision {
    /// Quote around fair value.
    Trade(TradeSignal),
    /// Stand aside.
    NoAction(NoActionReason),
}

/// A quote to send.
#[derive(Debug)]
pub struct TradeSignal {
    side: &'static str,
    price: f64,
    edge: f64,
    sent_ns: u64,
}

/// Why nothing was done.
#[derive(Debug)]
pub struct NoActionReason {
    reason: &'static str,
    sent_ns: u64,
}

/// The venue's acknowledgement.
#[derive(Debug, Serialize, Deserialize)]
pub struct Confirmation {
    side: String,
    price: f64,
    sent_ns: u64,
}

/// The audit trail of a decision not to trade.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditRecord {
    reason: String,
    sent_ns: u64,
}

const MIN_EDGE: f64 = 0.02;
const MAX_SPREAD: f64 = 0.20;

/// The reactor: fires when either feed has a new value.
#[reactor(name = "market_maker", accumulators = [orderbook, pricing],
          criteria = when_any(orderbook, pricing))]
pub struct MarketMaker;

/// The graph: only the taken branch of the decision runs.
#[computation_graph(trigger = reactor("market_maker"), graph = {
    decision(orderbook, pricing) => { Trade -> execute, NoAction -> audit },
})]
pub mod market_maker {
    use super::*;

    /// Quotes around fair value when the spread is tight and there is edge.
    pub fn decision(book: Option<&OrderBook>, pricing: Option<&Pricing>) -> Decision {
        let (Some(book), Some(pricing)) = (book, pricing) else {
            return Decision::NoAction(NoActionReason {
                reason: "waiting for both feeds",
                sent_ns: book.map_or(0, |b| b.sent_ns),
            });
        };
        let spread = book.best_ask - book.best_bid;
        if spread >= MAX_SPREAD {
            return Decision::NoAction(NoActionReason {
                reason: "spread too wide",
                sent_ns: book.sent_ns,
            });
        }
        let buy_edge = pricing.fair_value - book.best_ask;
        let sell_edge = book.best_bid - pricing.fair_value;
        if buy_edge >= MIN_EDGE {
            Decision::Trade(TradeSignal {
                side: "buy",
                price: book.best_ask,
                edge: buy_edge,
                sent_ns: book.sent_ns,
            })
        } else if sell_edge >= MIN_EDGE {
            Decision::Trade(TradeSignal {
                side: "sell",
                price: book.best_bid,
                edge: sell_edge,
                sent_ns: book.sent_ns,
            })
        } else {
            Decision::NoAction(NoActionReason {
                reason: "no edge",
                sent_ns: book.sent_ns,
            })
        }
    }

    /// Sends the quote (simulated venue).
    pub async fn execute(signal: &TradeSignal) -> Confirmation {
        // A real venue call would be awaited here.
        tracing::debug!(edge = signal.edge, "quoting");
        Confirmation {
            side: signal.side.to_owned(),
            price: signal.price,
            sent_ns: signal.sent_ns,
        }
    }

    /// Records why nothing was done.
    pub fn audit(reason: &NoActionReason) -> AuditRecord {
        AuditRecord {
            reason: reason.reason.to_owned(),
            sent_ns: reason.sent_ns,
        }
    }
}

static START: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Tiny deterministic PRNG for the simulated feeds (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn percentiles(mut v: Vec<u64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_unstable();
    let at =
        |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)] as f64 / 1000.0;
    (at(0.50), at(0.99), at(1.0))
}

fn parse_seconds() -> Result<u64, String> {
    let mut args = std::env::args().skip(1);
    let mut seconds = 5;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| *v > 0)
                    .ok_or("--seconds takes a whole number > 0")?;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (usage: market_maker [--seconds N])"
                ))
            }
        }
    }
    Ok(seconds)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = parse_seconds().map_err(|e| {
        eprintln!("{e}");
        e
    })?;
    now_ns();

    let mut model = Rng(0x5EED_1234_ABCD_0001);
    // The declarations registered themselves; the registry binds the graph to its reactor.
    let engine = Registry::from_declarations()?
        .embedded("market_maker")?
        .strategy(InputStrategy::Latest)
        .passthrough::<OrderBook>("orderbook")
        .polling("pricing", Duration::from_millis(10), move || {
            let fair_value = 100.0 + (model.next_f64() - 0.5) * 0.3;
            async move { Some(Pricing { fair_value }) }
        })
        .start()?;
    let mut results = engine.subscribe();

    // Simulated exchange feed: a random walk of the mid with a varying spread.
    let book = engine.sender::<OrderBook>("orderbook")?;
    let run_for = Duration::from_secs(seconds);
    let feed = tokio::spawn(async move {
        let mut rng = Rng(0xFEED_0000_0000_0042);
        let mut mid = 100.0_f64;
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        let end = Instant::now() + run_for;
        let mut pushed = 0u64;
        while Instant::now() < end {
            ticks.tick().await;
            mid += (rng.next_f64() - 0.5) * 0.02;
            mid += (100.0 - mid) * 0.01;
            let half_spread = 0.01 + rng.next_f64() * 0.12;
            let update = OrderBook {
                best_bid: mid - half_spread,
                best_ask: mid + half_spread,
                sent_ns: now_ns(),
            };
            if book.send(update).await.is_err() {
                break;
            }
            pushed += 1;
        }
        pushed
    });

    println!(
        "market_maker: {seconds} s, book every 1 ms (passthrough), pricing every 10 ms (polling)"
    );
    let (mut fires, mut trades, mut holds, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut all_latencies = Vec::new();
    let mut window = Vec::new();
    let mut last_book_seq = 0;
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut second = 0;
    loop {
        tokio::select! {
            item = results.recv() => {
                let Some(item) = item else { break };
                let firing = match item {
                    Ok(f) => f,
                    Err(lag) => { eprintln!("warning: {lag}"); continue; }
                };
                fires += 1;
                let sent_ns = if let Some(c) = firing.result.output::<Confirmation>("execute") {
                    trades += 1;
                    Some(c.sent_ns)
                } else if let Some(a) = firing.result.output::<AuditRecord>("audit") {
                    holds += 1;
                    Some(a.sent_ns)
                } else {
                    errors += 1;
                    None
                };
                // Latency counts only firings that consumed a new book update.
                let book_seq = firing.input_seq("orderbook").unwrap_or(0);
                if let Some(sent_ns) = sent_ns.filter(|_| book_seq != last_book_seq) {
                    let completed = u64::try_from(
                        firing.completed.duration_since(*START.get_or_init(Instant::now)).as_nanos(),
                    ).unwrap_or(u64::MAX);
                    window.push(completed.saturating_sub(sent_ns));
                }
                last_book_seq = book_seq;
            }
            _ = report.tick() => {
                second += 1;
                let (p50, p99, max) = percentiles(window.clone());
                println!(
                    "t={second:>3}s fires={fires:>7} trades={trades:>6} no_action={holds:>6} errors={errors} | book->result p50={p50:.1}us p99={p99:.1}us max={max:.1}us",
                );
                all_latencies.append(&mut window);
                if second >= seconds {
                    break;
                }
            }
        }
    }
    let pushed = feed.await?;
    let reactor = engine.reactor().clone();
    let report = engine.shutdown().await?;
    let runs = reactor.stats().firing_duration;
    let bound = |q: f64| runs.quantile(q).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    println!(
        "graph run time (reactor histogram, bucket upper bounds): p50 <= {:.1}us, p99 <= {:.1}us over {} firings",
        bound(0.5),
        bound(0.99),
        runs.count()
    );
    let (p50, p99, max) = percentiles(all_latencies);
    println!(
        "summary: book updates {pushed}, fires {} (one per book or pricing update, coalesced when busy), trades {trades}, no_action {holds}, errors {errors}, book->result p50 {p50:.1}us p99 {p99:.1}us max {max:.1}us",
        report.reactor.fires
    );
    if !report.accumulator_errors.is_empty() {
        return Err(format!("accumulator errors: {:?}", report.accumulator_errors).into());
    }
    Ok(())
}
