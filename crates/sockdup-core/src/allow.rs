//! Who may push descriptors into a process's inbox (or take over its listeners): pure policy on
//! kernel-verified uids.

use crate::error::{Error, ErrorKind};

/// Who may push descriptors into this process's inbox, checked on the kernel-verified uid of
/// the pushing process.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Allow {
    /// Processes of the same user, and root (the default).
    SameUser,
    /// Any process that can reach the inbox's address.
    AnyUser,
    /// Processes running as one of these uids (and this process's own user).
    Uids(Vec<u32>),
}

impl Allow {
    /// Whether a process of `peer_uid` may push to (or take over from) a process of `own_uid`.
    pub fn permits(&self, own_uid: u32, peer_uid: u32) -> bool {
        match self {
            Self::SameUser => peer_uid == own_uid || peer_uid == 0,
            Self::AnyUser => true,
            Self::Uids(uids) => peer_uid == own_uid || uids.contains(&peer_uid),
        }
    }

    /// Parses `SOCKDUP_ALLOW`'s forms: `same-user` (or empty), `any`, or uids separated by commas.
    ///
    /// # Errors
    /// [`ErrorKind::BadOption`] naming the variable.
    pub fn parse(value: &str) -> Result<Self, Error> {
        match value.trim() {
            "same-user" | "" => Ok(Self::SameUser),
            "any" => Ok(Self::AnyUser),
            list => list
                .split(',')
                .map(|u| u.trim().parse::<u32>())
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Uids)
                .map_err(|_| {
                    Error::new(ErrorKind::BadOption, format!(
                        "SOCKDUP_ALLOW is {value:?}: use \"same-user\", \"any\", or a comma-separated list of uids"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_policies() {
        assert!(Allow::SameUser.permits(1000, 1000));
        assert!(Allow::SameUser.permits(1000, 0));
        assert!(!Allow::SameUser.permits(1000, 1001));
        assert!(Allow::AnyUser.permits(1000, 1001));
        let some = Allow::Uids(vec![1001]);
        assert!(some.permits(1000, 1001) && some.permits(1000, 1000));
        assert!(!some.permits(1000, 0) && !some.permits(1000, 1002));
    }

    #[test]
    fn allow_parses_the_environment_forms() {
        assert_eq!(Allow::parse("same-user").unwrap(), Allow::SameUser);
        assert_eq!(Allow::parse(" any ").unwrap(), Allow::AnyUser);
        assert_eq!(
            Allow::parse("1000, 1001").unwrap(),
            Allow::Uids(vec![1000, 1001])
        );
        let e = Allow::parse("root").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadOption);
        assert!(e.message().contains("SOCKDUP_ALLOW"));
    }
}
