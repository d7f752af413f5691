//! The `fault` layer: injects errors (`fail.CALL = CODE`, as [`ErrorKind::Injected`] with that
//! code) and delays (`delay.CALL = MILLISECONDS`) into chosen calls; the delay comes first.

use std::collections::BTreeMap;
use std::time::Duration;

use sockdup_core::catalog::{Layer, ProviderCall};
use sockdup_core::error::{Error, ErrorKind, code_name};

use super::{Call, Config, Hooks, LayerKind, LayerSettings, bad_value, unknown};

/// The settings of a `fault` layer: errors and delays to inject, per call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultSettings {
    /// `fail.CALL = CODE`: the call fails with this Winsock error number.
    pub(crate) fail: BTreeMap<ProviderCall, i32>,
    /// `delay.CALL = MILLISECONDS`: the call waits this long first.
    pub(crate) delay: BTreeMap<ProviderCall, Duration>,
}

impl LayerSettings for FaultSettings {
    const KIND: &'static str = "fault";

    fn valid_keys() -> String {
        format!(
            "fail.CALL (a Winsock error number to inject) and delay.CALL (milliseconds to wait), \
             where CALL is one of {}",
            ProviderCall::names()
        )
    }

    fn usage() -> String {
        format!(
            "fail.CALL=WINSOCK-CODE  delay.CALL=MILLISECONDS, where CALL is a provider call: {}",
            ProviderCall::names()
        )
    }

    fn parse(config: &Config) -> Result<Self, Error> {
        let mut settings = Self::default();
        for (key, value) in config {
            let (what, call) = key.split_once('.').unwrap_or((key, ""));
            let Some(call) = ProviderCall::from_name(call) else {
                return Err(unknown::<Self>(key));
            };
            match what {
                "fail" => {
                    let code = value
                        .trim()
                        .parse()
                        .map_err(|_| bad_value::<Self>(key, value, "a Winsock error number"))?;
                    settings.fail.insert(call, code);
                }
                "delay" => {
                    let ms: u64 = value
                        .trim()
                        .parse()
                        .map_err(|_| bad_value::<Self>(key, value, "a number of milliseconds"))?;
                    settings.delay.insert(call, Duration::from_millis(ms));
                }
                _ => return Err(unknown::<Self>(key)),
            }
        }
        Ok(settings)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spi::layers::tests::{config, refused};

    #[test]
    fn fault_settings_take_only_calls_the_layer_intercepts() {
        let s = FaultSettings::parse(&config(&[
            ("fail.send", "10055"),
            ("delay.connect", "200"),
            ("fail.socket_from_info", " 10050 "),
        ]))
        .unwrap();
        assert_eq!(s.fail.get(&ProviderCall::Send), Some(&10055));
        assert_eq!(s.fail.get(&ProviderCall::SocketFromInfo), Some(&10050));
        assert_eq!(
            s.delay.get(&ProviderCall::Connect),
            Some(&Duration::from_millis(200))
        );
        for key in ["fail.conect", "fail", "delay.", "fial.send", "fail.send.x"] {
            let e = FaultSettings::parse(&config(&[(key, "10050")])).unwrap_err();
            refused(
                e,
                &[
                    &format!("{key:?}"),
                    "fail.CALL",
                    "delay.CALL",
                    "connect",
                    "socket_from_info",
                    "string_to_address",
                ],
            );
        }
        let e = FaultSettings::parse(&config(&[("fail.send", "many")])).unwrap_err();
        refused(e, &["\"fail.send\"", "\"many\"", "Winsock error number"]);
        let e = FaultSettings::parse(&config(&[("delay.recv", "-1")])).unwrap_err();
        refused(e, &["\"delay.recv\"", "milliseconds"]);
    }
}
