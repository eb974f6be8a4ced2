//! [`RetryPolicy`]: how often a failed task is tried again, and after how long.

use std::time::Duration;

use crate::TaskError;

/// How the delay before a retry grows with the attempt number.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum BackoffStrategy {
    /// Always the initial delay.
    Fixed,
    /// The initial delay plus `increment` per earlier retry.
    Linear {
        /// Added per retry.
        increment: Duration,
    },
    /// `initial × multiplier × base^(attempt − 1)`.
    Exponential {
        /// Growth per retry (2.0 doubles).
        base: f64,
        /// Scale applied to the initial delay.
        multiplier: f64,
    },
}

/// Which failures are retried.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum RetryCondition {
    /// Every error.
    AllErrors,
    /// None: one attempt whatever `max_attempts` says.
    Never,
    /// Timeouts, and errors whose text mentions a transient cause (connection, network,
    /// timeout, temporary, unavailable, busy, overloaded, rate limit).
    TransientOnly,
    /// Errors whose text contains one of these (case-insensitive).
    ErrorPattern(Vec<String>),
}

/// Words that make an error transient for [`RetryCondition::TransientOnly`].
const TRANSIENT: [&str; 8] = [
    "connection",
    "network",
    "timeout",
    "temporary",
    "unavailable",
    "busy",
    "overloaded",
    "rate limit",
];

/// How a failed task is retried: up to `max_attempts` runs in all (1: no retry), waiting
/// the backoff's delay (capped at `max_delay`, optionally jittered by ×0.75–1.25) between
/// them, for the failures `condition` accepts. A panic is never retried.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// Runs in all, counting the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// No delay is longer.
    pub max_delay: Duration,
    /// How the delay grows.
    pub backoff_strategy: BackoffStrategy,
    /// Multiply each delay by a random factor in [0.75, 1.25] (spreads retries out).
    pub jitter: bool,
    /// Which failures are retried.
    pub retry_condition: RetryCondition,
}

impl Default for RetryPolicy {
    /// One attempt (no retry); the other fields are what `builder()` starts from.
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            backoff_strategy: BackoffStrategy::Exponential {
                base: 2.0,
                multiplier: 1.0,
            },
            jitter: false,
            retry_condition: RetryCondition::AllErrors,
        }
    }
}

impl RetryPolicy {
    /// Starts from the default (1 attempt, 1 s initial, 60 s max, exponential ×2, no jitter,
    /// all errors).
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder(Self::default())
    }

    /// Whether a task that failed its `attempt`-th run (from 1) with `error` runs again.
    pub fn should_retry(&self, attempt: u32, error: &TaskError) -> bool {
        if attempt >= self.max_attempts || is_panic(error) {
            return false;
        }
        match &self.retry_condition {
            RetryCondition::AllErrors => true,
            RetryCondition::Never => false,
            RetryCondition::TransientOnly => {
                matches!(error, TaskError::Timeout { .. })
                    || failure_text(error).is_some_and(|text| {
                        let text = text.to_lowercase();
                        TRANSIENT.iter().any(|w| contains_words(&text, w))
                    })
            }
            RetryCondition::ErrorPattern(patterns) => {
                let text = error.to_string().to_lowercase();
                patterns.iter().any(|p| text.contains(&p.to_lowercase()))
            }
        }
    }

    /// The delay before the run after the `attempt`-th failed one (from 1). `unit` is a
    /// number in [0, 1) that picks the jitter factor (ignored without jitter).
    pub fn delay_after(&self, attempt: u32, unit: f64) -> Duration {
        let retries = attempt.max(1) - 1;
        let initial = self.initial_delay.as_secs_f64();
        let secs = match &self.backoff_strategy {
            BackoffStrategy::Fixed => initial,
            BackoffStrategy::Linear { increment } => {
                initial + increment.as_secs_f64() * f64::from(retries)
            }
            BackoffStrategy::Exponential { base, multiplier } => {
                initial * multiplier * base.powi(retries.min(i32::MAX as u32) as i32)
            }
        };
        let capped = secs.min(self.max_delay.as_secs_f64()).max(0.0);
        let jittered = if self.jitter {
            capped * (0.75 + 0.5 * unit.clamp(0.0, 1.0))
        } else {
            capped
        };
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max_delay)
    }
}

/// A panic, the task's own or a node's of a graph it invoked: never retried.
fn is_panic(error: &TaskError) -> bool {
    matches!(
        error,
        TaskError::Panicked { .. }
            | TaskError::Graph(crate::InvokeError::Graph {
                error: cloacina_graph_core::GraphError::NodePanicked { .. },
                ..
            })
    )
}

/// The text [`RetryCondition::TransientOnly`] reads: what the work itself reported (not
/// context keys or validation messages).
fn failure_text(error: &TaskError) -> Option<String> {
    match error {
        TaskError::ExecutionFailed { message } => Some(message.clone()),
        TaskError::Graph(crate::InvokeError::Graph { error, .. }) => Some(error.to_string()),
        _ => None,
    }
}

/// Whether `phrase` occurs in `text` as whole words ("busy" is not in "business").
fn contains_words(text: &str, phrase: &str) -> bool {
    text.match_indices(phrase).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + phrase.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Builds a [`RetryPolicy`] (see [`RetryPolicy::builder`]).
#[derive(Debug, Clone)]
pub struct RetryPolicyBuilder(RetryPolicy);

impl RetryPolicyBuilder {
    /// Runs in all, counting the first (0 is taken as 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.0.max_attempts = n.max(1);
        self
    }

    /// Delay before the first retry.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.0.initial_delay = delay;
        self
    }

    /// Cap on every delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.0.max_delay = delay;
        self
    }

    /// How the delay grows.
    pub fn backoff_strategy(mut self, strategy: BackoffStrategy) -> Self {
        self.0.backoff_strategy = strategy;
        self
    }

    /// Jitter each delay by ×0.75–1.25.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.0.jitter = jitter;
        self
    }

    /// Which failures are retried.
    pub fn retry_condition(mut self, condition: RetryCondition) -> Self {
        self.0.retry_condition = condition;
        self
    }

    /// The policy.
    pub fn build(self) -> RetryPolicy {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_follow_the_strategy_and_the_cap() {
        let exp = RetryPolicy::builder()
            .initial_delay(ms(100))
            .max_delay(ms(1000))
            .build();
        let delays: Vec<Duration> = (1..=6).map(|a| exp.delay_after(a, 0.0)).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        let linear = RetryPolicy::builder()
            .initial_delay(ms(100))
            .backoff_strategy(BackoffStrategy::Linear { increment: ms(50) })
            .build();
        assert_eq!(linear.delay_after(3, 0.0), ms(200));
        let fixed = RetryPolicy::builder()
            .initial_delay(ms(70))
            .backoff_strategy(BackoffStrategy::Fixed)
            .jitter(true)
            .build();
        let near = |d: Duration, us: u64| d.as_micros().abs_diff(u128::from(us)) <= 1;
        assert!(near(fixed.delay_after(5, 0.0), 52_500), "x0.75");
        assert!(near(fixed.delay_after(5, 1.0), 87_500), "x1.25");
    }

    #[test]
    fn attempts_and_conditions_decide_retries() {
        let failed = |m: &str| TaskError::failed(m);
        let three = RetryPolicy::builder().max_attempts(3).build();
        assert!(three.should_retry(1, &failed("x")));
        assert!(three.should_retry(2, &failed("x")));
        assert!(!three.should_retry(3, &failed("x")), "3 runs in all");
        assert!(!three.should_retry(
            1,
            &TaskError::Panicked {
                message: "boom".into()
            }
        ));
        let transient = RetryPolicy::builder()
            .max_attempts(3)
            .retry_condition(RetryCondition::TransientOnly)
            .build();
        assert!(transient.should_retry(1, &failed("Connection refused")));
        assert!(transient.should_retry(1, &TaskError::Timeout { after: ms(1) }));
        assert!(!transient.should_retry(1, &failed("invalid input")));
        assert!(!transient.should_retry(1, &failed("business rule violated")));
        assert!(!transient.should_retry(
            1,
            &TaskError::Context(crate::ContextError::KeyExists("connection_id".into()))
        ));
        let never = RetryPolicy::builder()
            .max_attempts(5)
            .retry_condition(RetryCondition::Never)
            .build();
        assert!(!never.should_retry(1, &failed("Connection refused")));
        let pattern = RetryPolicy::builder()
            .max_attempts(2)
            .retry_condition(RetryCondition::ErrorPattern(vec!["DEADLOCK".into()]))
            .build();
        assert!(pattern.should_retry(1, &failed("deadlock detected")));
        assert!(!pattern.should_retry(1, &failed("syntax error")));
    }
}
