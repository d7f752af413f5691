//! The `fault` layer: injects errors (`fail.CALL = CODE[,CODE...]`, as [`ErrorKind::Injected`]
//! with that code, one of the list at random) and delays (`delay.CALL = MILLISECONDS`) into
//! chosen calls; the delay comes first. `rate.CALL = PERCENT` makes a call fail only that often
//! (at random, from `seed = N`, so a run can be repeated), for soaks where every call may fail.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use sockdup_core::catalog::{Layer, ProviderCall};
use sockdup_core::error::{Error, ErrorKind, code_name};

use super::{Call, Config, Hooks, LayerKind, LayerSettings, bad_value, unknown};

/// The settings of a `fault` layer: errors and delays to inject, per call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultSettings {
    /// `fail.CALL = CODE[,CODE...]`: the call fails with one of these Winsock error numbers.
    pub(crate) fail: BTreeMap<ProviderCall, Vec<i32>>,
    /// `rate.CALL = PERCENT`: how often a `fail` of the call fires (100 when not given).
    pub(crate) rate: BTreeMap<ProviderCall, u32>,
    /// `seed = N`: the seed of the draws for `rate` and for a choice among codes.
    pub(crate) seed: u64,
    /// `delay.CALL = MILLISECONDS`: the call waits this long first.
    pub(crate) delay: BTreeMap<ProviderCall, Duration>,
}

impl LayerSettings for FaultSettings {
    const KIND: &'static str = "fault";

    fn valid_keys() -> String {
        format!(
            "fail.CALL (Winsock error numbers to inject, comma-separated: one at random), \
             rate.CALL (percent of the calls that fail, default 100), delay.CALL (milliseconds to \
             wait) and seed (of the random draws), where CALL is one of {}",
            ProviderCall::names()
        )
    }

    fn usage() -> String {
        format!(
            "fail.CALL=WINSOCK-CODE[,CODE...]  rate.CALL=PERCENT  delay.CALL=MILLISECONDS  seed=N, \
             where CALL is a provider call: {}",
            ProviderCall::names()
        )
    }

    fn parse(config: &Config) -> Result<Self, Error> {
        let mut settings = Self::default();
        for (key, value) in config {
            if key == "seed" {
                settings.seed = value
                    .trim()
                    .parse()
                    .map_err(|_| bad_value::<Self>(key, value, "a number"))?;
                continue;
            }
            let (what, call) = key.split_once('.').unwrap_or((key, ""));
            let Some(call) = ProviderCall::from_name(call) else {
                return Err(unknown::<Self>(key));
            };
            match what {
                "fail" => {
                    let codes = value
                        .split(',')
                        .map(|c| c.trim().parse())
                        .collect::<Result<Vec<i32>, _>>()
                        .map_err(|_| {
                            bad_value::<Self>(key, value, "Winsock error numbers, comma-separated")
                        })?;
                    settings.fail.insert(call, codes);
                }
                "rate" => {
                    let percent = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|p| *p <= 100)
                        .ok_or_else(|| bad_value::<Self>(key, value, "a percentage, 0 to 100"))?;
                    settings.rate.insert(call, percent);
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
    /// The state of the draws (splitmix64), from the `seed` setting.
    draws: Mutex<u64>,
}

impl Fault {
    /// The next random number (splitmix64: small, and plenty for choosing faults).
    fn draw(&self) -> u64 {
        let mut state = crate::sync::lock(&self.draws);
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl LayerKind for Fault {
    type Settings = FaultSettings;

    fn new(spec: &Layer, _chain_id: u32, settings: FaultSettings) -> Self {
        Self {
            id: spec.id,
            draws: Mutex::new(settings.seed),
            settings,
        }
    }
}

impl Hooks for Fault {
    fn before(&self, call: &Call<'_>) -> Result<(), Error> {
        if let Some(d) = self.settings.delay.get(&call.name) {
            std::thread::sleep(*d);
        }
        let Some(codes) = self.settings.fail.get(&call.name) else {
            return Ok(());
        };
        let rate = self.settings.rate.get(&call.name).copied().unwrap_or(100);
        if rate < 100 && self.draw() % 100 >= u64::from(rate) {
            return Ok(());
        }
        let code = match codes.len() {
            0 => return Ok(()),
            1 => codes[0],
            n => codes[(self.draw() % n as u64) as usize],
        };
        Err(Error::with_code(
            ErrorKind::Injected,
            code,
            format!(
                "fault layer {} injected {} into {} (as its catalog settings ask)",
                self.id,
                code_name(code).unwrap_or("an error"),
                call.name.name()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spi::layers::tests::{config, refused};

    #[test]
    fn a_rate_fires_about_that_often_and_a_seed_repeats_the_same_draws() {
        let spec = |seed: &str| Layer {
            id: 1101,
            kind: "fault".into(),
            name: "flaky".into(),
            ifs: true,
            provider_id: sockdup_core::wire::Guid::default(),
            config: config(&[
                ("fail.send", "10050,10055,10024"),
                ("rate.send", "25"),
                ("seed", seed),
            ]),
        };
        let draws = |seed: &str| {
            let f = Fault::new(
                &spec(seed),
                1102,
                FaultSettings::parse(&spec(seed).config).unwrap(),
            );
            let call = Call {
                name: ProviderCall::Send,
                socket: None,
                info: None,
                detail: super::super::Detail::None,
            };
            (0..4000)
                .map(|_| f.before(&call).err().map(|e| e.code()))
                .collect::<Vec<_>>()
        };
        let a = draws("42");
        assert_eq!(a, draws("42"), "the same seed draws the same faults");
        assert_ne!(a, draws("43"));
        let fired = a.iter().flatten().count();
        assert!((800..1200).contains(&fired), "{fired} of 4000 at 25%");
        for code in [10050, 10055, 10024] {
            assert!(a.contains(&Some(code)), "{code} never drawn");
        }
    }

    #[test]
    fn fault_settings_take_only_calls_the_layer_intercepts() {
        let s = FaultSettings::parse(&config(&[
            ("fail.send", "10055"),
            ("delay.connect", "200"),
            ("fail.socket_from_info", " 10050 "),
        ]))
        .unwrap();
        assert_eq!(s.fail.get(&ProviderCall::Send), Some(&vec![10055]));
        assert_eq!(
            s.fail.get(&ProviderCall::SocketFromInfo),
            Some(&vec![10050])
        );
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
        let s = FaultSettings::parse(&config(&[
            ("fail.close", "10050, 10055"),
            ("rate.close", "30"),
            ("seed", "7"),
        ]))
        .unwrap();
        assert_eq!(s.fail.get(&ProviderCall::Close), Some(&vec![10050, 10055]));
        assert_eq!((s.rate.get(&ProviderCall::Close), s.seed), (Some(&30), 7));
        for (key, value) in [("rate.close", "101"), ("rate.close", "x"), ("seed", "-1")] {
            let e = FaultSettings::parse(&config(&[(key, value)])).unwrap_err();
            refused(e, &[&format!("{key:?}"), &format!("{value:?}")]);
        }
        let e = FaultSettings::parse(&config(&[("delay.recv", "-1")])).unwrap_err();
        refused(e, &["\"delay.recv\"", "milliseconds"]);
    }
}
