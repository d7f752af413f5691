//! The `fault` layer: injects errors (`fail.CALL = CODE`, as [`ErrorKind::Injected`] with that
//! code) and delays (`delay.CALL = MILLISECONDS`) into chosen calls; the delay comes first.

use sockdup_core::catalog::{FaultSettings, Layer};
use sockdup_core::error::{Error, ErrorKind, code_name};

use super::{Call, Hooks, LayerKind};

/// One `fault` layer instance.
#[derive(Debug)]
pub(crate) struct Fault {
    id: u32,
    settings: FaultSettings,
}

impl LayerKind for Fault {
    type Settings = FaultSettings;

    fn new(spec: &Layer, _chain_id: u32, settings: FaultSettings) -> Self {
        Self {
            id: spec.id,
            settings,
        }
    }
}

impl Hooks for Fault {
    fn before(&self, call: &Call<'_>) -> Result<(), Error> {
        if let Some(d) = self.settings.delay.get(&call.name) {
            std::thread::sleep(*d);
        }
        match self.settings.fail.get(&call.name) {
            Some(&code) => Err(Error::with_code(
                ErrorKind::Injected,
                code,
                format!(
                    "fault layer {} injected {} into {} (as its catalog settings ask)",
                    self.id,
                    code_name(code).unwrap_or("an error"),
                    call.name.name()
                ),
            )),
            None => Ok(()),
        }
    }
}
