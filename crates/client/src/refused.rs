//! What the client says when the server refuses its join: the server's reason once, what the
//! user can do about it (which flag to change), and whether trying again could help.

/// Whether retrying the same handshake could be let in later: a name held by someone else (or
/// by a node that died) frees up, a full room or server empties, a cluster comes back. A bad
/// name, a wrong or missing password or a ban do not change by retrying.
pub fn may_pass_later(reason: &str) -> bool {
    const LATER: &[&str] = &[
        "is already taken",
        "is too much like",
        "is full",
        "server full",
        "too many",
        "try again",
        "unavailable",
        "handshake timeout",
    ];
    LATER.iter().any(|part| reason.contains(part))
}

/// What to do about `reason`, for the user who ran the client as `name` (with a password or
/// without one), when the client knows.
pub fn advice(reason: &str, name: &str, with_password: bool) -> Option<String> {
    // Today's answer to a registered name without its password, and the one it becomes
    // (`name NAME is registered: send its password`); `/nick`'s `needs a password` as well.
    let registered = reason.contains("is registered") || reason.contains("needs a password");
    if registered || (reason == "authentication failed" && !with_password) {
        return Some(format!(
            "if {name} is your registered name, run with -password-file FILE (its first line is the password) or set MACHAT_PASSWORD; otherwise choose another name with -client NAME"
        ));
    }
    if reason == "authentication failed" {
        return Some(format!(
            "the password for {name} was not accepted: check the file given to -password-file (or MACHAT_PASSWORD)"
        ));
    }
    if reason.starts_with("name") || reason.starts_with("names") {
        return Some("choose another name with -client NAME".to_owned());
    }
    if reason.starts_with("room") {
        return Some("choose another room with -room ROOM".to_owned());
    }
    None
}

/// Says what to do about a refusal, on stderr (the refusal itself was shown once already: on
/// stdout as the server sent it, or on stderr by the reconnect loop).
pub fn advise(reason: &str, name: &str, with_password: bool) {
    if let Some(advice) = advice(reason, name, with_password) {
        eprintln!("machat-client: {advice}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_do_and_whether_to_retry() {
        for reason in [
            "authentication failed",
            "name Mina is registered: send its password",
        ] {
            let advice = advice(reason, "Mina", false).unwrap();
            assert!(advice.contains("-password-file FILE"), "{advice}");
            assert!(!may_pass_later(reason));
        }
        assert!(advice("authentication failed", "Mina", true)
            .unwrap()
            .contains("was not accepted"));
        assert_eq!(
            advice(
                "names cannot contain spaces: use _ or - instead",
                "a b",
                false
            )
            .as_deref(),
            Some("choose another name with -client NAME")
        );
        assert_eq!(
            advice(
                "rooms cannot contain \"/\" (it starts commands)",
                "a",
                false
            )
            .as_deref(),
            Some("choose another room with -room ROOM")
        );
        assert!(may_pass_later("name Mina is already taken in room r"));
        assert!(may_pass_later("the cluster is unavailable, try again"));
        assert!(!may_pass_later("you are banned from this server"));
        assert!(!may_pass_later(
            "names cannot contain spaces: use _ or - instead"
        ));
    }
}
