//! The grid of workloads a sweep measures, checked against the model before anything runs.

use super::{Field, PlanError};
use crate::estimate::Workload;
use crate::spec::ModelSpec;

/// Largest batch and context accepted: beyond these a CPU run would take hours or a
/// typo (an extra zero) is far likelier than intent.
pub const MAX_BATCH: u64 = 4096;
pub const MAX_CONTEXT: u64 = 1 << 20;
/// Most decode steps after a prefill.
pub const MAX_DECODE_STEPS: u64 = 4096;
/// Most values in the batch or the context list (a grid of at most 64 x 64 points).
pub const MAX_LIST: usize = 64;
/// Decode steps measured after each prefill unless asked otherwise.
pub const DEFAULT_DECODE_STEPS: u64 = 8;

/// Batch sizes x context lengths, each point followed by `decode_steps` decode steps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grid {
    pub batches: Vec<u64>,
    pub contexts: Vec<u64>,
    pub decode_steps: u64,
}

impl Grid {
    /// The grid a sweep measures when none is given: batch {1, 2, 4} x context {128, 256,
    /// 512, 1024} for inference, batch {1, 2} x context {128, 256, 512} for training (each
    /// point is two training steps).
    pub fn default_for(mode: super::Mode) -> Grid {
        let (batches, contexts) = match mode {
            super::Mode::Inference => (vec![1, 2, 4], vec![128, 256, 512, 1024]),
            super::Mode::Train => (vec![1, 2], vec![128, 256, 512]),
        };
        Grid {
            batches,
            contexts,
            decode_steps: DEFAULT_DECODE_STEPS,
        }
    }

    /// No points: a plan read back from run.json's `settings`, until the grid stored beside
    /// them is put in (see [`super::BenchPlan`]).
    pub fn stored_beside() -> Grid {
        Grid {
            batches: Vec::new(),
            contexts: Vec::new(),
            decode_steps: DEFAULT_DECODE_STEPS,
        }
    }

    /// Points the grid plans: distinct batches x distinct contexts (one more or less
    /// where two contexts meet at the model's limit, see [`Grid::workloads`]).
    pub fn points(&self) -> u64 {
        let distinct = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.dedup();
            v.len() as u64
        };
        distinct(&self.batches) * distinct(&self.contexts)
    }

    /// The checks that need no model: lists of 1 to [`MAX_LIST`] values, each in range.
    ///
    /// # Errors
    /// [`PlanError`] naming the field.
    pub fn check_values(&self) -> Result<(), PlanError> {
        let list = |field: Field, v: &[u64], lo: u64, hi: u64| -> Result<(), PlanError> {
            if v.is_empty() {
                return Err(PlanError::Empty { field });
            }
            if v.len() > MAX_LIST {
                return Err(PlanError::Invalid {
                    field,
                    value: format!("({} values)", v.len()),
                    reason: format!("give at most {MAX_LIST} values"),
                });
            }
            match v.iter().find(|&&x| !(lo..=hi).contains(&x)) {
                Some(bad) => Err(PlanError::Invalid {
                    field,
                    value: bad.to_string(),
                    reason: format!("must be between {lo} and {hi}"),
                }),
                None => Ok(()),
            }
        };
        list(Field::Batch, &self.batches, 1, MAX_BATCH)?;
        list(Field::Context, &self.contexts, 2, MAX_CONTEXT)?;
        list(
            Field::DecodeSteps,
            &[self.decode_steps],
            1,
            MAX_DECODE_STEPS,
        )
    }

    /// Every (batch, context) pair, batch-major, in the order given, each at most once.
    ///
    /// A context that fits the model's `max_position_embeddings` but not with its decode
    /// steps after it is read as the sequence the KV cache must hold: the prompt is shortened
    /// by the decode steps (8192 on an 8192-position model: a prompt of 8184 tokens, then 8
    /// decode steps). [`Grid::assumptions`] says so in words, for the output.
    ///
    /// # Errors
    /// [`PlanError`] for an empty list, a zero or absurd value, or a context beyond the
    /// model's `max_position_embeddings` (candle precomputes rotary tables only that far).
    pub fn workloads(&self, spec: &ModelSpec) -> Result<Vec<Workload>, PlanError> {
        self.workloads_for(spec, super::Mode::Inference)
    }

    /// [`Grid::workloads`] for a sweep of `mode`: a training step's context is the whole
    /// sequence (no decode steps follow it), so it is taken as given up to the model's limit.
    ///
    /// # Errors
    /// As [`Grid::workloads`].
    pub fn workloads_for(
        &self,
        spec: &ModelSpec,
        mode: super::Mode,
    ) -> Result<Vec<Workload>, PlanError> {
        let after = match mode {
            super::Mode::Inference => self.decode_steps,
            super::Mode::Train => 0,
        };
        self.check(spec, after)?;
        let mut out: Vec<Workload> = Vec::new();
        for &batch in &self.batches {
            for &c in &self.contexts {
                let w = Workload {
                    batch,
                    context: prompt(spec, c, after),
                    decode_steps: self.decode_steps,
                };
                if !crate::estimate::sizable(spec, w) {
                    return Err(PlanError::invalid(
                        Field::Context,
                        c,
                        format!(
                            "at batch {batch}, {} needs more than 2^62 bytes: beyond what \
                             vramprobe sizes exactly (and any machine)",
                            spec.name()
                        ),
                    ));
                }
                if !out.contains(&w) {
                    out.push(w);
                }
            }
        }
        Ok(out)
    }

    /// What was assumed about the requested contexts, one sentence each (empty when every
    /// context was taken as given).
    pub fn assumptions(&self, spec: &ModelSpec) -> Vec<String> {
        let mut seen = Vec::new();
        self.contexts
            .iter()
            .filter(|&&c| {
                prompt(spec, c, self.decode_steps) != c && !seen.contains(&c) && {
                    seen.push(c);
                    true
                }
            })
            .map(|&c| {
                format!(
                    "context {c}: {} of {} holds {} positions, so the cache holds {c} tokens: \
                     a prompt of {} tokens, then {} decode steps",
                    spec.name(),
                    spec.source,
                    spec.max_position_embeddings,
                    prompt(spec, c, self.decode_steps),
                    self.decode_steps
                )
            })
            .collect()
    }

    fn check(&self, spec: &ModelSpec, after: u64) -> Result<(), PlanError> {
        self.check_values()?;
        for &c in &self.contexts {
            let invalid = |reason: String| PlanError::Invalid {
                field: Field::Context,
                value: c.to_string(),
                reason,
            };
            if c > spec.max_position_embeddings {
                return Err(invalid(format!(
                    "exceeds max_position_embeddings {} of {}",
                    spec.max_position_embeddings, spec.source
                )));
            }
            if prompt(spec, c, after) < 2 {
                return Err(invalid(format!(
                    "leaves no prompt before {after} decode steps within \
                     max_position_embeddings {} of {}",
                    spec.max_position_embeddings, spec.source
                )));
            }
        }
        Ok(())
    }
}

/// The prompt measured for a requested context `c` with `after` tokens following it (see
/// [`Grid::workloads`]).
fn prompt(spec: &ModelSpec, c: u64, after: u64) -> u64 {
    if c + after > spec.max_position_embeddings {
        c.saturating_sub(after)
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> ModelSpec {
        ModelSpec::from_json_str(
            include_str!("../../models/vramprobe-tiny-llama/config.json"),
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
                field: Field::Batch,
                ..
            })
        ));
        assert_eq!(
            grid(&[], &[64]).workloads(&tiny()),
            Err(PlanError::Empty {
                field: Field::Batch
            })
        );
        let e = grid(&[1], &[64; 65]).workloads(&tiny()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--context (65 values): give at most 64 values"
        );
        assert_eq!(
            e.api_message(),
            "context: (65 values): give at most 64 values"
        );
        let err = grid(&[1], &[2049])
            .workloads(&tiny())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_position_embeddings 2048"), "{err}");
        assert!(grid(&[1], &[2040]).workloads(&tiny()).is_ok());
    }

    /// A context at the model's limit is the sequence the cache holds: the prompt gives way
    /// to the decode steps, the output says so, and a point is never planned twice.
    #[test]
    fn a_context_at_the_limit_makes_room_for_the_decode_steps() {
        let g = grid(&[1, 1], &[2048, 2040, 64, 2045]);
        let w = g.workloads(&tiny()).unwrap();
        let pairs: Vec<_> = w.iter().map(|w| (w.context, w.decode_steps)).collect();
        assert_eq!(pairs, vec![(2040, 8), (64, 8), (2037, 8)]);
        let said = g.assumptions(&tiny());
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].starts_with("context 2048:"), "{said:?}");
        assert!(said[0].contains("a prompt of 2040 tokens, then 8 decode steps"));
        assert!(grid(&[1], &[64]).assumptions(&tiny()).is_empty());
        // A training step has no decode steps: its context is taken as given.
        let t = g.workloads_for(&tiny(), crate::plan::Mode::Train).unwrap();
        let contexts: Vec<_> = t.iter().map(|w| w.context).collect();
        assert_eq!(contexts, vec![2048, 2040, 64, 2045]);
    }
}
