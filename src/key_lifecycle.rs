//! The data-key lifecycle rules in one place: which version comes next, what a rotation changes,
//! when a version may be retired, and what the token swap does. Pure decisions over key states;
//! the `etl keys` commands carry them out in the database.

use crate::crypto::{KeyState, KeyVersion, Purpose};

/// One stored key's purpose, version and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    pub purpose: Purpose,
    pub version: KeyVersion,
    pub state: KeyState,
}

/// Why a lifecycle step is refused; each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The purpose has no active key (`keys init` not run).
    #[error("there is no active {0} key; run `etl keys init`.")]
    NoActive(Purpose),
    /// A token rotation is already in progress.
    #[error(
        "token key v{0} is already pending; run `etl keys retokenize` to finish that rotation first."
    )]
    PendingExists(KeyVersion),
    /// No such key.
    #[error("there is no {0} key v{1}; see `etl keys status`.")]
    Missing(Purpose, KeyVersion),
    /// The key is the one new rows use.
    #[error("{0} key v{1} is active; rotate first (`etl keys rotate --purpose {0}`).")]
    Active(Purpose, KeyVersion),
    /// The key is a token rotation in progress.
    #[error("{0} key v{1} is pending; finish with `etl keys retokenize`.")]
    Pending(Purpose, KeyVersion),
    /// The token key being swapped in is not pending any more (another job finished or undid it).
    #[error("token key v{0} is no longer pending; see `etl keys status`.")]
    NoLongerPending(KeyVersion),
}

/// What `keys rotate` does for one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The version to add.
    pub next: KeyVersion,
    /// Its state: seal keys are active at once, token keys pending until the swap.
    pub state: KeyState,
    /// The active version, which a seal rotation demotes to previous.
    pub current: KeyVersion,
    /// Whether `current` becomes previous now (seal) or at the swap (token).
    pub demote_now: bool,
}

/// What `keys retire` may do with one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// Retired before: nothing to do (the runbook may be re-run).
    Already,
    /// A previous key: may be shredded once no row uses it.
    Proceed,
}

/// What the token swap changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    /// The pending version that becomes active.
    pub activate: KeyVersion,
    /// The active versions that become previous.
    pub demote: Vec<KeyVersion>,
}

fn of(keys: &[KeyStatus], purpose: Purpose) -> impl Iterator<Item = &KeyStatus> {
    keys.iter().filter(move |k| k.purpose == purpose)
}

/// The active version of a purpose.
pub fn active(keys: &[KeyStatus], purpose: Purpose) -> Option<KeyVersion> {
    of(keys, purpose)
        .find(|k| k.state == KeyState::Active)
        .map(|k| k.version)
}

/// The next rotation of `purpose`: refused without an active key or while a token rotation is
/// pending. Versions only grow, also past retired ones.
pub fn plan_rotation(keys: &[KeyStatus], purpose: Purpose) -> Result<Rotation, Refusal> {
    let current = active(keys, purpose).ok_or(Refusal::NoActive(purpose))?;
    if let Some(pending) = of(keys, purpose).find(|k| k.state == KeyState::Pending) {
        return Err(Refusal::PendingExists(pending.version));
    }
    let next = of(keys, purpose).map(|k| k.version.0).max().unwrap_or(0) + 1;
    let (state, demote_now) = match purpose {
        Purpose::Seal => (KeyState::Active, true),
        Purpose::Token => (KeyState::Pending, false),
    };
    Ok(Rotation {
        next: KeyVersion(next),
        state,
        current,
        demote_now,
    })
}

/// Whether `version` of `purpose` may be retired (the caller still checks no row uses it).
pub fn plan_retirement(
    keys: &[KeyStatus],
    purpose: Purpose,
    version: KeyVersion,
) -> Result<Retirement, Refusal> {
    let key = of(keys, purpose)
        .find(|k| k.version == version)
        .ok_or(Refusal::Missing(purpose, version))?;
    match key.state {
        KeyState::Retired => Ok(Retirement::Already),
        KeyState::Active => Err(Refusal::Active(purpose, version)),
        KeyState::Pending => Err(Refusal::Pending(purpose, version)),
        KeyState::Previous => Ok(Retirement::Proceed),
    }
}

/// The token swap that makes `pending` active, checked against the states as committed now.
pub fn plan_token_swap(keys: &[KeyStatus], pending: KeyVersion) -> Result<Swap, Refusal> {
    let still_pending =
        of(keys, Purpose::Token).any(|k| k.version == pending && k.state == KeyState::Pending);
    if !still_pending {
        return Err(Refusal::NoLongerPending(pending));
    }
    Ok(Swap {
        activate: pending,
        demote: of(keys, Purpose::Token)
            .filter(|k| k.state == KeyState::Active)
            .map(|k| k.version)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(purpose: Purpose, version: u32, state: KeyState) -> KeyStatus {
        KeyStatus {
            purpose,
            version: KeyVersion(version),
            state,
        }
    }

    #[test]
    fn seal_rotation_activates_at_once_and_token_rotation_waits_for_the_swap() {
        let keys = [
            key(Purpose::Seal, 1, KeyState::Retired),
            key(Purpose::Seal, 2, KeyState::Active),
            key(Purpose::Token, 1, KeyState::Active),
        ];
        let seal = plan_rotation(&keys, Purpose::Seal).unwrap();
        assert_eq!(
            seal,
            Rotation {
                next: KeyVersion(3),
                state: KeyState::Active,
                current: KeyVersion(2),
                demote_now: true
            },
            "versions grow past retired ones"
        );
        let token = plan_rotation(&keys, Purpose::Token).unwrap();
        assert_eq!(
            (token.next, token.state, token.demote_now),
            (KeyVersion(2), KeyState::Pending, false)
        );
    }

    #[test]
    fn rotation_is_refused_without_keys_or_while_a_token_key_is_pending() {
        assert_eq!(
            plan_rotation(&[], Purpose::Seal),
            Err(Refusal::NoActive(Purpose::Seal))
        );
        let keys = [
            key(Purpose::Token, 1, KeyState::Active),
            key(Purpose::Token, 2, KeyState::Pending),
        ];
        assert_eq!(
            plan_rotation(&keys, Purpose::Token),
            Err(Refusal::PendingExists(KeyVersion(2)))
        );
    }

    #[test]
    fn only_previous_keys_retire_and_retiring_twice_is_a_no_op() {
        let keys = [
            key(Purpose::Seal, 1, KeyState::Previous),
            key(Purpose::Seal, 2, KeyState::Active),
            key(Purpose::Token, 1, KeyState::Retired),
            key(Purpose::Token, 2, KeyState::Active),
            key(Purpose::Token, 3, KeyState::Pending),
        ];
        let retire = |p, v| plan_retirement(&keys, p, KeyVersion(v));
        assert_eq!(retire(Purpose::Seal, 1), Ok(Retirement::Proceed));
        assert_eq!(retire(Purpose::Token, 1), Ok(Retirement::Already));
        assert_eq!(
            retire(Purpose::Seal, 2),
            Err(Refusal::Active(Purpose::Seal, KeyVersion(2)))
        );
        assert_eq!(
            retire(Purpose::Token, 3),
            Err(Refusal::Pending(Purpose::Token, KeyVersion(3)))
        );
        assert_eq!(
            retire(Purpose::Seal, 9),
            Err(Refusal::Missing(Purpose::Seal, KeyVersion(9)))
        );
    }

    #[test]
    fn the_swap_activates_the_pending_key_and_demotes_the_active_one() {
        let keys = [
            key(Purpose::Token, 1, KeyState::Active),
            key(Purpose::Token, 2, KeyState::Pending),
            key(Purpose::Seal, 1, KeyState::Active),
        ];
        assert_eq!(
            plan_token_swap(&keys, KeyVersion(2)),
            Ok(Swap {
                activate: KeyVersion(2),
                demote: vec![KeyVersion(1)]
            })
        );
        assert_eq!(
            plan_token_swap(&keys, KeyVersion(3)),
            Err(Refusal::NoLongerPending(KeyVersion(3)))
        );
    }
}
