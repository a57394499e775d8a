//! Where a model comes from: the built-in tiny Llama, a local directory or config.json, or
//! the Hugging Face Hub; and its [`ModelSpec`] once found.

use crate::spec::ModelSpec;
use std::path::{Path, PathBuf};

/// Where a `--model` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// The built-in tiny Llama ([`crate::TINY_CONFIG`]).
    Builtin,
    Local(PathBuf),
    /// A Hugging Face model id, `owner/name`.
    Hub(String),
}

impl ModelRef {
    /// A path that exists, or whose first component is a local directory (`models/x`), is
    /// local; otherwise an `owner/name` is a Hub model id.
    pub fn of(model: Option<&str>) -> ModelRef {
        match model {
            None => ModelRef::Builtin,
            Some(m) if Path::new(m).exists() => ModelRef::Local(m.into()),
            Some(m)
                if crate::hub::is_repo_id(m)
                    && !m.split('/').next().is_some_and(|d| Path::new(d).is_dir()) =>
            {
                ModelRef::Hub(m.to_string())
            }
            Some(m) => ModelRef::Local(m.into()),
        }
    }

    /// The model's spec, and for a Hub model the snapshot directory it was fetched into
    /// (with the weights when `weights` is set).
    ///
    /// # Errors
    /// [`crate::spec::SpecError`] for a config that cannot be read, [`crate::hub::HubError`]
    /// for a Hub model that cannot be fetched.
    pub fn load(
        &self,
        revision: Option<&str>,
        weights: bool,
        quiet: bool,
    ) -> anyhow::Result<(ModelSpec, Option<PathBuf>)> {
        match self {
            ModelRef::Builtin => Ok((
                ModelSpec::from_json_str(crate::TINY_CONFIG, Path::new(crate::TINY_CONFIG_PATH))?,
                None,
            )),
            ModelRef::Local(p) => Ok((ModelSpec::from_path(p)?, None)),
            ModelRef::Hub(repo) => {
                let dir = crate::hub::fetch(repo, revision, weights, quiet)?;
                let mut spec = ModelSpec::from_path(&dir)?;
                spec.hub_repo = Some(repo.clone());
                Ok((spec, Some(dir)))
            }
        }
    }
}
