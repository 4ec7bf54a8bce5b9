//! Actors: a parameter server and stateless workers fit a linear model together.
//!
//! `cargo run --release --example parameter_server`. The parameter server is an actor holding
//! the model's weights; each round, workers (ordinary tasks) compute gradients on their own
//! shard of synthetic data against the current weights, passed to them by reference, and the
//! server applies the gradients in order. The loss printed each round falls as the fit improves.
//! Without `KEEL_ADDRESS` the cluster is started in this process.

use keel::{actor, method, remote, ActorClass, Method, Remote};

const FEATURES: usize = 8;
const SHARD_ROWS: usize = 2_000;

/// The model the data comes from, and that the fit should find.
fn true_weights() -> Vec<f64> {
    (0..FEATURES).map(|i| (i as f64 - 3.5) / 2.0).collect()
}

/// A shard of synthetic data: rows of features and their targets (deterministic per shard).
fn shard(seed: u64) -> (Vec<[f64; FEATURES]>, Vec<f64>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let w = true_weights();
    let mut xs = Vec::with_capacity(SHARD_ROWS);
    let mut ys = Vec::with_capacity(SHARD_ROWS);
    for _ in 0..SHARD_ROWS {
        let x: [f64; FEATURES] = std::array::from_fn(|_| next());
        ys.push(x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + 0.01 * next());
        xs.push(x);
    }
    (xs, ys)
}

/// A worker's step: the mean-squared-error gradient on its shard, and the shard's loss.
static GRADIENT: Remote<(Vec<f64>, u64), (Vec<f64>, f64)> = remote("gradient", |(weights, seed)| {
    let (xs, ys) = shard(seed);
    let mut grad = vec![0.0; FEATURES];
    let mut loss = 0.0;
    for (x, y) in xs.iter().zip(&ys) {
        let err = x.iter().zip(&weights).map(|(a, b)| a * b).sum::<f64>() - y;
        loss += err * err;
        for (g, xi) in grad.iter_mut().zip(x) {
            *g += 2.0 * err * xi / SHARD_ROWS as f64;
        }
    }
    (grad, loss / SHARD_ROWS as f64)
});

/// The parameter server's state.
struct Server {
    weights: Vec<f64>,
    learning_rate: f64,
    updates: u64,
}

static SERVER: ActorClass<Server, (f64,)> =
    actor("Server", |(learning_rate,)| Server { weights: vec![0.0; FEATURES], learning_rate, updates: 0 });
static WEIGHTS: Method<Server, (), Vec<f64>> = method("Server.weights", |s, ()| s.weights.clone());
static APPLY: Method<Server, ((Vec<f64>, f64),), f64> = method("Server.apply", |s, ((grad, loss),)| {
    for (w, g) in s.weights.iter_mut().zip(&grad) {
        *w -= s.learning_rate * g;
    }
    s.updates += 1;
    loss
});

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keel = keel::init(&[&GRADIENT, &SERVER, &WEIGHTS, &APPLY])?;
    let server = SERVER.create(&keel, (0.5,))?;
    let workers = 4;
    for round in 0..12 {
        // The current weights stay in the cluster; workers read them by reference.
        let weights = WEIGHTS.call(&keel, &server, ())?;
        let grads: Vec<_> =
            (0..workers).map(|w| GRADIENT.call(&keel, (&weights, w as u64))).collect::<Result<_, _>>()?;
        // The server applies each worker's gradient as it is handed over, in call order.
        let losses: Vec<_> = grads.iter().map(|g| APPLY.call(&keel, &server, (g,))).collect::<Result<_, _>>()?;
        let losses = keel.get_all(&losses)?;
        let mean = losses.iter().sum::<f64>() / losses.len() as f64;
        println!("round {round:>2}: mean loss {mean:.6}");
    }
    let fitted = keel.get(&WEIGHTS.call(&keel, &server, ())?)?;
    let error = fitted.iter().zip(true_weights()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("largest weight error after 48 updates: {error:.4}");
    Ok(())
}
