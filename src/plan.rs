//! The grid of workloads a bench measures, checked against the model before anything runs.

use crate::estimate::Workload;
use crate::spec::ModelSpec;

/// Largest batch and context accepted: beyond these a CPU run would take hours or a
/// typo (an extra zero) is far likelier than intent.
pub const MAX_BATCH: u64 = 4096;
pub const MAX_CONTEXT: u64 = 1 << 20;

/// Errors in the requested grid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--{flag} {value}: {reason}")]
    Invalid {
        flag: &'static str,
        value: u64,
        reason: String,
    },
    #[error("--{flag}: at least one value is needed")]
    Empty { flag: &'static str },
}

/// Batch sizes x context lengths, each point followed by `decode_steps` decode steps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grid {
    pub batches: Vec<u64>,
    pub contexts: Vec<u64>,
    pub decode_steps: u64,
}

impl Grid {
    /// Every (batch, context) pair, batch-major, in the order given.
    ///
    /// # Errors
    /// [`PlanError`] for an empty list, a zero or absurd value, or a context that with its
    /// decode steps runs past the model's `max_position_embeddings` (candle precomputes
    /// rotary tables only that far).
    pub fn workloads(&self, spec: &ModelSpec) -> Result<Vec<Workload>, PlanError> {
        if self.batches.is_empty() {
            return Err(PlanError::Empty { flag: "batch" });
        }
        if self.contexts.is_empty() {
            return Err(PlanError::Empty { flag: "context" });
        }
        let invalid = |flag, value, reason: String| PlanError::Invalid {
            flag,
            value,
            reason,
        };
        if self.decode_steps == 0 || self.decode_steps > 4096 {
            return Err(invalid(
                "decode-steps",
                self.decode_steps,
                "must be between 1 and 4096".into(),
            ));
        }
        for &b in &self.batches {
            if b == 0 || b > MAX_BATCH {
                return Err(invalid(
                    "batch",
                    b,
                    format!("must be between 1 and {MAX_BATCH}"),
                ));
            }
        }
        for &c in &self.contexts {
            if !(2..=MAX_CONTEXT).contains(&c) {
                return Err(invalid(
                    "context",
                    c,
                    format!("must be between 2 and {MAX_CONTEXT}"),
                ));
            }
            if c + self.decode_steps > spec.max_position_embeddings {
                return Err(invalid(
                    "context",
                    c,
                    format!(
                        "with {} decode steps it exceeds max_position_embeddings {} of {}",
                        self.decode_steps, spec.max_position_embeddings, spec.source
                    ),
                ));
            }
        }
        Ok(self
            .batches
            .iter()
            .flat_map(|&batch| {
                self.contexts.iter().map(move |&context| Workload {
                    batch,
                    context,
                    decode_steps: self.decode_steps,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> ModelSpec {
        ModelSpec::from_json_str(
            include_str!("../models/vramprobe-tiny-llama/config.json"),
            Path::new("tiny/config.json"),
        )
        .unwrap()
    }

    fn grid(b: &[u64], c: &[u64]) -> Grid {
        Grid {
            batches: b.to_vec(),
            contexts: c.to_vec(),
            decode_steps: 8,
        }
    }

    #[test]
    fn batch_major_order() {
        let w = grid(&[1, 2], &[64, 128]).workloads(&tiny()).unwrap();
        let pairs: Vec<_> = w.iter().map(|w| (w.batch, w.context)).collect();
        assert_eq!(pairs, vec![(1, 64), (1, 128), (2, 64), (2, 128)]);
    }

    #[test]
    fn rejects_zero_empty_and_too_long() {
        assert!(matches!(
            grid(&[0], &[64]).workloads(&tiny()),
            Err(PlanError::Invalid {
                flag: "batch",
                value: 0,
                ..
            })
        ));
        assert_eq!(
            grid(&[], &[64]).workloads(&tiny()),
            Err(PlanError::Empty { flag: "batch" })
        );
        let err = grid(&[1], &[2045])
            .workloads(&tiny())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_position_embeddings 2048"), "{err}");
        assert!(grid(&[1], &[2040]).workloads(&tiny()).is_ok());
    }
}
