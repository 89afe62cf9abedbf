//! The management policy against a reference model (proptest-state-machine): random
//! sequences of management calls, by random callers, over a small universe of tokens of
//! varied power (wildcard permissions, read-only, expiry, networks, hosts, bindings, use and
//! rate limits, types), with leak reports (no caller) among them, run through the real server over real gRPC on a real SQLite file
//! (and, fewer, on Postgres). After every call the server's answer and its whole state are
//! checked against the model, whose rules are written here again, independently of
//! `src/domain`:
//!
//! - the call is allowed exactly when the model allows it, and a bulk revocation disables
//!   and skips exactly what the model says;
//! - every token in the store equals the model's, field for field;
//! - no call leaves a token its caller created or changed with power the caller lacks,
//!   and no caller ever receives the secret of a token it does not cover;
//! - a refused call changes nothing: no token, no audit event (but the failed
//!   authentication that is audited by design).
//!
//! `TA_MODEL_CASES` (1000) and `TA_MODEL_PG_CASES` (40) set how many sequences run.

use std::{collections::BTreeSet, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use proptest::{prelude::*, sample::subsequence, test_runner::Config};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use token_authority::{
    domain::{
        audit::AuditEvent as StoredEvent,
        permission::Permission,
        restrictions::{Cidr, HostPattern},
        secret::{TokenPrefix, TokenSecret},
        token::{RateLimit as TokenRate, Token as Stored},
    },
    pb::v1::{
        CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, RateLimit,
        ReportLeakedTokensRequest, RevokeTokensRequest, RotateTokenRequest, SetTokenEnabledRequest,
        Token, UpdateTokenRequest, leak_service_client::LeakServiceClient,
        token_service_client::TokenServiceClient,
    },
    store::{self, Actor, AuditQuery, ListQuery, TokenStore},
};
use tonic::{Code, Request, transport::Channel};

use crate::helpers::{Backend, TestApp, TestDb, authed, spawn_with, test_settings};

// ---------------------------------------------------------------------------------------
// The vocabulary of the universe.

const PERMISSIONS: [&str; 10] = [
    "*:*",
    "*:read",
    "tokens:*",
    "tokens:read",
    "tokens:write",
    "tokens:create",
    "tokens:delete",
    "domains:*",
    "domains:read",
    "assistants:read",
];
const OWNERS: [&str; 3] = ["admin", "a", "b"];
/// Networks: 10.0.0.0/8 and, inside it, 10.1.0.0/16. Every call comes from 10.1.2.3.
const NETS: [&str; 2] = ["10.0.0.0/8", "10.1.0.0/16"];
/// Hosts: *.example.com and, inside it, api.example.com. Every call is sent to the latter.
const HOSTS: [&str; 2] = ["*.example.com", "api.example.com"];
/// Rate limits as (requests, seconds): 1000/2s has 500/s's rate but twice its burst.
const RATES: [(i64, i64); 3] = [(1000, 1), (500, 1), (1000, 2)];
const GRACE_SECONDS: i64 = 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Personal,
    Assistant,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Personal => "personal",
            Kind::Assistant => "assistant",
        }
    }
}

/// A token's power in the model. On a create request, empty and `None` mean unset.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Power {
    permissions: BTreeSet<&'static str>,
    read_only: bool,
    /// Hours after the sequence's start; none is never.
    expiry: Option<i64>,
    nets: BTreeSet<usize>,
    hosts: BTreeSet<usize>,
    /// The binding team=<value>.
    team: Option<&'static str>,
    /// The binding assistantId=a1.
    assistant_bound: bool,
    max_uses: Option<i64>,
    rate: Option<usize>,
    kind: Kind,
}

#[derive(Clone, Debug)]
struct ModelToken {
    owner: &'static str,
    power: Power,
    description: &'static str,
    uses: i64,
    enabled: bool,
    deleted: bool,
    created_by: Option<usize>,
    /// Holds a rotated-out secret still in its grace period.
    in_grace: bool,
    /// Its current secret was reported leaked (and it has not been rotated since).
    reported: bool,
}

fn perm_covers(held: &str, wanted: &str) -> bool {
    let (hr, ha) = held.split_once(':').unwrap();
    let (wr, wa) = wanted.split_once(':').unwrap();
    (hr == "*" || hr == wr) && (ha == "*" || ha == wa)
}

fn is_read(permission: &str) -> bool {
    permission.ends_with(":read")
}

fn net_within(inner: usize, outer: usize) -> bool {
    inner == outer || outer == 0
}

fn host_within(inner: usize, outer: usize) -> bool {
    inner == outer || outer == 0
}

fn rate_within(inner: usize, outer: usize) -> bool {
    let ((ir, is), (or, os)) = (RATES[inner], RATES[outer]);
    ir <= or && ir * os <= or * is
}

impl ModelToken {
    fn is_admin(&self) -> bool {
        self.power.permissions.contains("*:*")
    }

    fn remaining(&self) -> Option<i64> {
        self.power.max_uses.map(|max| (max - self.uses).max(0))
    }

    fn holds(&self, needed: &str) -> bool {
        self.power
            .permissions
            .iter()
            .any(|p| perm_covers(p, needed))
            && (!self.power.read_only || is_read(needed))
    }

    /// The model's own statement of "covers".
    fn covers(&self, other: &ModelToken) -> bool {
        let (h, t) = (&self.power, &other.power);
        let permissions = t.permissions.iter().all(|p| {
            h.permissions.iter().any(|q| perm_covers(q, p)) && (!h.read_only || is_read(p))
        });
        let read_only = !h.read_only || t.read_only;
        let expiry = match (h.expiry, t.expiry) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b <= a,
        };
        let nets = h.nets.is_empty()
            || (!t.nets.is_empty()
                && t.nets
                    .iter()
                    .all(|n| h.nets.iter().any(|m| net_within(*n, *m))));
        let hosts = h.hosts.is_empty()
            || (!t.hosts.is_empty()
                && t.hosts
                    .iter()
                    .all(|n| h.hosts.iter().any(|m| host_within(*n, *m))));
        // A bound holder covers only tokens bound exactly as it is (an extra key reaches
        // gateway requests naming only that key).
        let bindings = (h.team.is_none() && !h.assistant_bound)
            || (h.team == t.team && h.assistant_bound == t.assistant_bound);
        let uses = match (self.remaining(), other.remaining()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b <= a,
        };
        let rate = match (h.rate, t.rate) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => rate_within(b, a),
        };
        permissions && read_only && expiry && nets && hosts && bindings && uses && rate
    }

    /// Spends one use of an allowed call; only usage-limited tokens count them.
    fn spend(&mut self) {
        self.charge(1);
    }

    /// Spends `uses` (the call's own and those it gives away) if a usage-limited token has
    /// them left; false, spending nothing, if not.
    fn charge(&mut self, uses: i64) -> bool {
        match self.power.max_uses {
            None => true,
            Some(max) if self.uses + uses <= max => {
                self.uses += uses;
                true
            }
            Some(_) => false,
        }
    }

    /// May it authenticate a call needing `needed` (every call comes from a network and
    /// to a host every token allows, and no rate limit is reached)?
    fn authenticates(&self, needed: &str) -> bool {
        !self.deleted
            && self.enabled
            && self.remaining().is_none_or(|left| left > 0)
            && self.holds(needed)
    }
}

/// The assistant type's template: bound on assistantId, expiring, read-only. Personal
/// tokens have no requirements.
fn fits(power: &Power, kind: Kind) -> bool {
    match kind {
        Kind::Personal => true,
        Kind::Assistant => power.assistant_bound && power.expiry.is_some() && power.read_only,
    }
}

// ---------------------------------------------------------------------------------------
// The calls.

#[derive(Clone, Debug)]
enum Change {
    Permissions(BTreeSet<&'static str>),
    ReadOnly(bool),
    Expiry(Option<i64>),
    Nets(BTreeSet<usize>),
    Hosts(BTreeSet<usize>),
    Bindings(Option<&'static str>, bool),
    MaxUses(Option<i64>),
    Rate(Option<usize>),
    Kind(Kind),
    Description,
}

#[derive(Clone, Debug)]
enum RevokeBy {
    Owner(&'static str),
    Kind(Kind),
    CreatedBy(usize),
}

#[derive(Clone, Debug)]
enum Call {
    Create {
        caller: usize,
        owner: Option<&'static str>,
        spec: Power,
    },
    Update {
        caller: usize,
        target: usize,
        change: Change,
    },
    SetEnabled {
        caller: usize,
        target: usize,
        enabled: bool,
    },
    Delete {
        caller: usize,
        target: usize,
    },
    Rotate {
        caller: usize,
        target: usize,
        grace: bool,
    },
    Revoke {
        caller: usize,
        by: RevokeBy,
        include_caller: bool,
    },
    /// A management call with a rotated-out secret still in its grace period.
    WithOldSecret {
        target: usize,
    },
    /// A leak report (ReportLeakedTokens, no credential) of the target's current secret,
    /// or of its previous one in its grace period.
    Report {
        target: usize,
        previous: bool,
    },
}

/// What the model says a call does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Allowed,
    Refused,
    Revoked { revoked: i64, skipped: i64 },
}

#[derive(Clone, Debug)]
struct Model {
    tokens: Vec<ModelToken>,
    expect: Expect,
}

fn power_strategy(force_valid: bool) -> impl Strategy<Value = Power> {
    (
        subsequence(PERMISSIONS.to_vec(), 0..=3),
        any::<bool>(),
        prop_oneof![Just(None), Just(Some(1)), Just(Some(2))],
        subsequence(vec![0usize, 1], 0..=1),
        subsequence(vec![0usize, 1], 0..=1),
        prop_oneof![Just(None), Just(Some("red")), Just(Some("blue"))],
        any::<bool>(),
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(2)),
            1 => Just(Some(4)),
            1 => Just(Some(100))
        ],
        prop_oneof![3 => Just(None), 1 => Just(Some(0)), 1 => Just(Some(1)), 1 => Just(Some(2))],
        prop_oneof![4 => Just(Kind::Personal), 1 => Just(Kind::Assistant)],
    )
        .prop_map(
            move |(perms, read_only, expiry, nets, hosts, team, bound, max_uses, rate, kind)| {
                let mut power = Power {
                    permissions: perms.into_iter().collect(),
                    read_only,
                    expiry,
                    nets: nets.into_iter().collect(),
                    hosts: hosts.into_iter().collect(),
                    team,
                    assistant_bound: bound,
                    max_uses,
                    rate,
                    kind,
                };
                // An assistant token made without an expiry would get 90 days from its
                // creation; the model keeps to explicit hours.
                if kind == Kind::Assistant {
                    power.expiry = power.expiry.or(Some(2));
                    if force_valid {
                        power.assistant_bound = true;
                    }
                }
                power
            },
        )
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        subsequence(PERMISSIONS.to_vec(), 0..=3)
            .prop_map(|p| Change::Permissions(p.into_iter().collect())),
        any::<bool>().prop_map(Change::ReadOnly),
        prop_oneof![Just(None), Just(Some(1)), Just(Some(2))].prop_map(Change::Expiry),
        subsequence(vec![0usize, 1], 0..=1).prop_map(|n| Change::Nets(n.into_iter().collect())),
        subsequence(vec![0usize, 1], 0..=1).prop_map(|h| Change::Hosts(h.into_iter().collect())),
        (
            prop_oneof![Just(None), Just(Some("red")), Just(Some("blue"))],
            any::<bool>()
        )
            .prop_map(|(team, bound)| Change::Bindings(team, bound)),
        prop_oneof![Just(None), Just(Some(2)), Just(Some(100))].prop_map(Change::MaxUses),
        prop_oneof![Just(None), Just(Some(0)), Just(Some(1)), Just(Some(2))].prop_map(Change::Rate),
        prop_oneof![Just(Kind::Personal), Just(Kind::Assistant)].prop_map(Change::Kind),
        Just(Change::Description),
    ]
}

/// Whether `token` is among `root`'s descendants (created by it, or by one of them).
fn descends(tokens: &[ModelToken], mut token: usize, root: usize) -> bool {
    while let Some(parent) = tokens[token].created_by {
        if parent == root {
            return true;
        }
        token = parent;
    }
    false
}

impl Model {
    fn visible(&self, caller: usize, target: usize) -> bool {
        let (c, t) = (&self.tokens[caller], &self.tokens[target]);
        !t.deleted && (c.owner == t.owner || c.is_admin())
    }

    /// Applies a call the model allows to the model; returns what it expects.
    fn run(&mut self, call: &Call) -> Expect {
        use Expect::{Allowed, Refused};
        match call.clone() {
            Call::Create {
                caller,
                owner,
                spec,
            } => {
                let c = self.tokens[caller].clone();
                if !c.authenticates("tokens:create") {
                    return Refused;
                }
                let owner = owner.unwrap_or(c.owner);
                if owner != c.owner && !c.is_admin() {
                    return Refused;
                }
                let mut power = spec;
                if power.kind == Kind::Assistant {
                    if power.permissions.is_empty() {
                        power.permissions.insert("assistants:read");
                    }
                    power.read_only = true;
                }
                // Unset limits are inherited from the creator.
                power.expiry = power.expiry.or(c.power.expiry);
                if power.nets.is_empty() {
                    power.nets = c.power.nets.clone();
                }
                if power.hosts.is_empty() {
                    power.hosts = c.power.hosts.clone();
                }
                power.team = power.team.or(c.power.team);
                power.assistant_bound |= c.power.assistant_bound;
                // What the creator has left after this call's own use.
                power.max_uses = power
                    .max_uses
                    .or(c.remaining().map(|left| (left - 1).max(1)));
                power.rate = power.rate.or(c.power.rate);
                let token = ModelToken {
                    owner,
                    power,
                    description: "",
                    uses: 0,
                    enabled: true,
                    deleted: false,
                    created_by: Some(caller),
                    in_grace: false,
                    reported: false,
                };
                if !fits(&token.power, token.power.kind) || !c.covers(&token) {
                    return Refused;
                }
                // A usage-limited creator pays for the uses it gives away.
                let given = match c.power.max_uses {
                    Some(_) => token.remaining().unwrap_or(0),
                    None => 0,
                };
                if !self.tokens[caller].charge(1 + given) {
                    return Refused;
                }
                self.tokens.push(token);
                Allowed
            }
            Call::Update {
                caller,
                target,
                change,
            } => {
                let c = self.tokens[caller].clone();
                if !c.authenticates("tokens:write") || !self.visible(caller, target) {
                    return Refused;
                }
                let before = self.tokens[target].clone();
                let mut after = before.clone();
                let p = &mut after.power;
                match change {
                    Change::Permissions(v) => p.permissions = v,
                    Change::ReadOnly(v) => p.read_only = v,
                    Change::Expiry(v) => p.expiry = v,
                    Change::Nets(v) => p.nets = v,
                    Change::Hosts(v) => p.hosts = v,
                    Change::Bindings(team, bound) => {
                        p.team = team;
                        p.assistant_bound = bound;
                    }
                    Change::MaxUses(v) => p.max_uses = v,
                    Change::Rate(v) => p.rate = v,
                    Change::Kind(v) => p.kind = v,
                    Change::Description => after.description = "changed",
                }
                let templates =
                    fits(&after.power, after.power.kind) && fits(&after.power, before.power.kind);
                if !c.covers(&before) || !templates || !c.covers(&after) {
                    return Refused;
                }
                // A usage-limited caller pays for the remaining uses it adds; the charge is
                // made on the caller as it was, before the change (which may be to the
                // caller itself) is written.
                let given = match (c.power.max_uses, before.remaining(), after.remaining()) {
                    (Some(_), Some(had), Some(now)) => (now - had).max(0),
                    _ => 0,
                };
                let mut charged = self.tokens[caller].clone();
                if !charged.charge(1 + given) {
                    return Refused;
                }
                self.tokens[target] = after;
                self.tokens[caller].uses = charged.uses;
                Allowed
            }
            Call::SetEnabled {
                caller,
                target,
                enabled,
            } => {
                let c = self.tokens[caller].clone();
                if !c.authenticates("tokens:write")
                    || !self.visible(caller, target)
                    || !c.covers(&self.tokens[target])
                {
                    return Refused;
                }
                // Enabled as it is, a reported token would accept its leaked secret again.
                if enabled && self.tokens[target].reported {
                    return Refused;
                }
                self.tokens[caller].spend();
                self.tokens[target].enabled = enabled;
                Allowed
            }
            Call::Delete { caller, target } => {
                let c = self.tokens[caller].clone();
                if !c.authenticates("tokens:delete")
                    || !self.visible(caller, target)
                    || !c.covers(&self.tokens[target])
                {
                    return Refused;
                }
                self.tokens[caller].spend();
                self.tokens[target].deleted = true;
                Allowed
            }
            Call::Rotate {
                caller,
                target,
                grace,
            } => {
                let c = self.tokens[caller].clone();
                if !c.authenticates("tokens:write")
                    || !self.visible(caller, target)
                    || !c.covers(&self.tokens[target])
                {
                    return Refused;
                }
                // A disabled token's secret (perhaps reported leaked) must not come back
                // as a previous secret in grace once the token is enabled.
                if grace && !self.tokens[target].enabled {
                    return Refused;
                }
                self.tokens[caller].spend();
                self.tokens[target].in_grace = grace;
                // The reported secret is replaced (and, without grace, forgotten).
                self.tokens[target].reported = false;
                Allowed
            }
            Call::Revoke {
                caller,
                by,
                include_caller,
            } => {
                let c = self.tokens[caller].clone();
                if !c.authenticates("tokens:write") {
                    return Refused;
                }
                if let RevokeBy::Owner(owner) = by
                    && owner != c.owner
                    && !c.is_admin()
                {
                    return Refused;
                }
                // Judged by the caller as it was when the call arrived; its own row, if it
                // matches, as it is after this call's use.
                self.tokens[caller].spend();
                let (mut revoked, mut skipped) = (0, 0);
                for i in 0..self.tokens.len() {
                    let t = &self.tokens[i];
                    let matched = !t.deleted
                        && t.enabled
                        && (c.is_admin() || t.owner == c.owner)
                        && match by {
                            RevokeBy::Owner(owner) => t.owner == owner,
                            RevokeBy::Kind(kind) => t.power.kind == kind,
                            RevokeBy::CreatedBy(root) => descends(&self.tokens, i, root),
                        };
                    if !matched {
                        continue;
                    }
                    if (i == caller && !include_caller) || !c.covers(t) {
                        skipped += 1;
                    } else {
                        revoked += 1;
                        self.tokens[i].enabled = false;
                    }
                }
                Expect::Revoked { revoked, skipped }
            }
            Call::WithOldSecret { .. } => Refused,
            Call::Report { target, previous } => {
                let t = &mut self.tokens[target];
                match (t.deleted, previous) {
                    // A deleted token's secrets are no one's: the report changes nothing.
                    (true, _) => {}
                    (false, true) => t.in_grace = false,
                    (false, false) => {
                        t.enabled = false;
                        t.reported = true;
                    }
                }
                Allowed
            }
        }
    }
}

struct PolicyModel;

impl ReferenceStateMachine for PolicyModel {
    type State = Model;
    type Transition = Call;

    fn init_state() -> BoxedStrategy<Model> {
        let admin = ModelToken {
            owner: "admin",
            power: Power {
                permissions: ["*:*"].into(),
                read_only: false,
                expiry: None,
                nets: BTreeSet::new(),
                hosts: BTreeSet::new(),
                team: None,
                assistant_bound: false,
                max_uses: None,
                rate: None,
                kind: Kind::Personal,
            },
            description: "admin token made by bootstrap",
            uses: 0,
            enabled: true,
            deleted: false,
            created_by: None,
            in_grace: false,
            reported: false,
        };
        // Made by the admin, which covers them all; each fits its template.
        proptest::collection::vec(
            (
                proptest::sample::select(OWNERS.to_vec()),
                power_strategy(true),
            ),
            5,
        )
        .prop_map(move |made| {
            let mut model = Model {
                tokens: vec![admin.clone()],
                expect: Expect::Allowed,
            };
            for (owner, spec) in made {
                let call = Call::Create {
                    caller: 0,
                    owner: Some(owner),
                    spec,
                };
                model.run(&call);
            }
            model
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Call> {
        let n = state.tokens.len();
        let token = 0..n;
        let graced: Vec<usize> = (0..n).filter(|i| state.tokens[*i].in_grace).collect();
        let mut choices = vec![
            (
                3,
                (
                    token.clone(),
                    proptest::option::of(proptest::sample::select(OWNERS.to_vec())),
                    power_strategy(false),
                )
                    .prop_map(|(caller, owner, spec)| Call::Create {
                        caller,
                        owner,
                        spec,
                    })
                    .boxed(),
            ),
            (
                4,
                (token.clone(), token.clone(), change_strategy())
                    .prop_map(|(caller, target, change)| Call::Update {
                        caller,
                        target,
                        change,
                    })
                    .boxed(),
            ),
            (
                2,
                (token.clone(), token.clone(), any::<bool>())
                    .prop_map(|(caller, target, enabled)| Call::SetEnabled {
                        caller,
                        target,
                        enabled,
                    })
                    .boxed(),
            ),
            (
                1,
                (token.clone(), token.clone())
                    .prop_map(|(caller, target)| Call::Delete { caller, target })
                    .boxed(),
            ),
            (
                3,
                (token.clone(), token.clone(), any::<bool>())
                    .prop_map(|(caller, target, grace)| Call::Rotate {
                        caller,
                        target,
                        grace,
                    })
                    .boxed(),
            ),
            (
                1,
                (
                    token.clone(),
                    prop_oneof![
                        proptest::sample::select(OWNERS.to_vec()).prop_map(RevokeBy::Owner),
                        prop_oneof![Just(Kind::Personal), Just(Kind::Assistant)]
                            .prop_map(RevokeBy::Kind),
                        token.clone().prop_map(RevokeBy::CreatedBy),
                    ],
                    any::<bool>(),
                )
                    .prop_map(|(caller, by, include_caller)| Call::Revoke {
                        caller,
                        by,
                        include_caller,
                    })
                    .boxed(),
            ),
        ];
        // Any token's current secret but the admin's: a sequence whose admin is reported
        // (disabled, and rotated by no one else) would test little after it.
        choices.push((
            1,
            (1..n)
                .prop_map(|target| Call::Report {
                    target,
                    previous: false,
                })
                .boxed(),
        ));
        if !graced.is_empty() {
            choices.push((
                1,
                proptest::sample::select(graced.clone())
                    .prop_map(|target| Call::WithOldSecret { target })
                    .boxed(),
            ));
            choices.push((
                1,
                proptest::sample::select(graced)
                    .prop_map(|target| Call::Report {
                        target,
                        previous: true,
                    })
                    .boxed(),
            ));
        }
        proptest::strategy::Union::new_weighted(choices).boxed()
    }

    fn preconditions(state: &Model, call: &Call) -> bool {
        let n = state.tokens.len();
        match call {
            Call::Create { caller, .. } => *caller < n,
            Call::Update { caller, target, .. }
            | Call::SetEnabled { caller, target, .. }
            | Call::Delete { caller, target }
            | Call::Rotate { caller, target, .. } => *caller < n && *target < n,
            Call::Revoke { caller, by, .. } => {
                *caller < n && !matches!(by, RevokeBy::CreatedBy(root) if *root >= n)
            }
            Call::WithOldSecret { target }
            | Call::Report {
                target,
                previous: true,
            } => *target < n && state.tokens[*target].in_grace,
            Call::Report { target, .. } => *target < n,
        }
    }

    fn apply(mut state: Model, call: &Call) -> Model {
        state.expect = state.run(call);
        state
    }
}

// ---------------------------------------------------------------------------------------
// The system under test: the real server.

/// A handle's id and secrets, as the server handed them out.
#[derive(Clone, Debug)]
struct Handle {
    id: String,
    secret: String,
    old_secret: Option<String>,
}

struct Server {
    app: TestApp,
    client: TokenServiceClient<Channel>,
    /// The same database, read directly: an observer no call of the model can rotate,
    /// disable or revoke.
    store: Arc<dyn TokenStore>,
    handles: Vec<Handle>,
    start: DateTime<Utc>,
    /// The state after the last call: every token (usage bookkeeping aside) and every
    /// audit event but failed authentications.
    last: (Vec<Stored>, Vec<StoredEvent>),
}

/// A SQLite store migrated and bootstrapped once, copied for each sequence: its making
/// is the same every time and not under test.
struct Template {
    db: TestDb,
    admin: String,
}

impl Template {
    fn copy(&self) -> (TestDb, Option<String>) {
        let dir = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm"),
            false => tempfile::tempdir(),
        }
        .unwrap();
        let path = dir.path().join("tokens.db");
        std::fs::copy(self.db.sqlite_path().unwrap(), &path).unwrap();
        let db = TestDb {
            backend: Backend::Sqlite,
            url: format!("sqlite://{}", path.display()),
            dir: Some(dir),
        };
        (db, Some(self.admin.clone()))
    }
}

async fn template() -> &'static Template {
    static TEMPLATE: tokio::sync::OnceCell<Template> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let db = TestDb::fresh_on_tmpfs(Backend::Sqlite).await;
            let store = store::connect(&test_settings(&db).store).await.unwrap();
            store.migrate().await.unwrap();
            store
                .seed_types(&token_authority::domain::token_type::builtin_types(
                    Utc::now(),
                ))
                .await
                .unwrap();
            let (_, secret) = token_authority::bootstrap::create_admin_token(
                store.as_ref(),
                &TokenPrefix::default(),
                "admin",
                token_authority::bootstrap::Mode::FirstStart,
            )
            .await
            .unwrap()
            .expect("a first start");
            // Closing the last connection checkpoints the WAL into the file copied.
            store.close().await;
            Template {
                db,
                admin: secret.expose().to_owned(),
            }
        })
        .await
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Every call, as the server sees it: from 10.1.2.3 (forwarded by a trusted proxy) to
/// api.example.com, so that network and host limits never stop a caller.
fn request_as<T>(secret: &str, message: T) -> Request<T> {
    let mut request = authed(secret, message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", "10.1.2.3".parse().unwrap());
    request
}

fn pb_spec(spec: &Power, start: DateTime<Utc>, name: String, owner: Option<&str>) -> Token {
    Token {
        name,
        owner: owner.unwrap_or_default().into(),
        r#type: spec.kind.name().into(),
        permissions: spec.permissions.iter().map(|p| p.to_string()).collect(),
        read_only: spec.read_only,
        expire_time: spec.expiry.map(|h| timestamp(start, h)),
        allowed_cidrs: spec.nets.iter().map(|n| NETS[*n].into()).collect(),
        allowed_hosts: spec.hosts.iter().map(|h| HOSTS[*h].into()).collect(),
        bindings: bindings(spec.team, spec.assistant_bound),
        max_uses: spec.max_uses.unwrap_or(0),
        rate_limit: spec.rate.map(rate),
        ..Default::default()
    }
}

fn bindings(team: Option<&str>, bound: bool) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    if let Some(team) = team {
        map.insert("team".into(), team.into());
    }
    if bound {
        map.insert("assistantId".into(), "a1".into());
    }
    map
}

fn rate(index: usize) -> RateLimit {
    let (requests, seconds) = RATES[index];
    RateLimit {
        requests,
        interval: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

fn timestamp(start: DateTime<Utc>, hours: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: start.timestamp() + hours * 3600,
        nanos: 0,
    }
}

/// A token of the universe as the admin would have made it.
fn universe_token(
    token: &ModelToken,
    secret: &TokenSecret,
    name: String,
    admin: uuid::Uuid,
    start: DateTime<Utc>,
) -> Stored {
    let p = &token.power;
    let mut stored = Stored::new(token.owner.into(), secret, Some(admin), start);
    stored.name = name;
    stored.token_type = p.kind.name().into();
    stored.permissions = p
        .permissions
        .iter()
        .map(|x| Permission::parse(x).unwrap())
        .collect();
    stored.read_only = p.read_only;
    stored.expire_time = p.expiry.map(|h| start + chrono::Duration::hours(h));
    stored.allowed_cidrs = p
        .nets
        .iter()
        .map(|n| Cidr::parse(NETS[*n]).unwrap())
        .collect();
    stored.allowed_hosts = p
        .hosts
        .iter()
        .map(|h| HostPattern::parse(HOSTS[*h]).unwrap())
        .collect();
    stored.bindings = bindings(p.team, p.assistant_bound).into_iter().collect();
    stored.max_uses = p.max_uses;
    stored.rate_limit = p.rate.map(|r| {
        let (requests, seconds) = RATES[r];
        TokenRate::new(requests, std::time::Duration::from_secs(seconds as u64)).unwrap()
    });
    stored
}

/// Reads a stored token back into the model's terms.
fn observed(token: &Stored, start: DateTime<Utc>) -> (Power, i64, bool) {
    let index = |list: &[&str], value: &str| {
        list.iter()
            .position(|v| *v == value)
            .unwrap_or_else(|| panic!("{value} is outside the universe"))
    };
    let power = Power {
        permissions: token
            .permissions
            .iter()
            .map(|p| PERMISSIONS[index(&PERMISSIONS, &p.to_string())])
            .collect(),
        read_only: token.read_only,
        expiry: token.expire_time.map(|t| {
            let seconds = t.timestamp() - start.timestamp();
            assert_eq!(seconds % 3600, 0, "expiry {t} is not on the hour");
            seconds / 3600
        }),
        nets: token
            .allowed_cidrs
            .iter()
            .map(|c| index(&NETS, &c.to_string()))
            .collect(),
        hosts: token
            .allowed_hosts
            .iter()
            .map(|h| index(&HOSTS, &h.to_string()))
            .collect(),
        team: token.bindings.get("team").map(|t| match t.as_str() {
            "red" => "red",
            "blue" => "blue",
            other => panic!("team {other}"),
        }),
        assistant_bound: token.bindings.contains_key("assistantId"),
        max_uses: token.max_uses,
        rate: token.rate_limit.map(|r| {
            let seen = (i64::from(r.requests), r.interval.as_secs() as i64);
            RATES
                .iter()
                .position(|x| *x == seen)
                .expect("a rate of the universe")
        }),
        kind: match token.token_type.as_str() {
            "personal" => Kind::Personal,
            "assistant" => Kind::Assistant,
            other => panic!("type {other}"),
        },
    };
    (power, token.uses, token.enabled)
}

impl Server {
    async fn start(model: &Model, backend: Backend) -> Self {
        let (db, admin_secret) = match backend {
            Backend::Sqlite => template().await.copy(),
            Backend::Postgres => (TestDb::fresh(backend).await, None),
        };
        let mut settings = test_settings(&db);
        settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        let observer = store::connect(&settings.store).await.unwrap();
        let app = spawn_with(db, settings, admin_secret).await;
        let endpoint = Channel::from_shared(format!("http://{}", app.target))
            .unwrap()
            .origin("http://api.example.com".parse().unwrap());
        let client = TokenServiceClient::new(endpoint.connect().await.unwrap());
        let admin = observer
            .find_by_hash(
                &TokenSecret::hash_of_presented(&app.admin).unwrap(),
                Utc::now(),
            )
            .await
            .unwrap()
            .expect("the bootstrap admin");
        let start = Utc::now().trunc_subsecs(0);
        let mut handles = vec![Handle {
            id: admin.id.to_string(),
            secret: app.admin.clone(),
            old_secret: None,
        }];
        // The universe is written straight to the store, as the admin (which covers it
        // all) would make it: its making is not under test, the calls after it are.
        for (i, token) in model.tokens.iter().enumerate().skip(1) {
            let secret = TokenSecret::generate(&TokenPrefix::default());
            let stored = universe_token(token, &secret, format!("t{i}"), admin.id, start);
            let audit = StoredEvent::new(
                "create",
                format!("token/{}", stored.id),
                Some(&admin),
                start,
            );
            let actor = Actor {
                id: admin.id,
                revision: admin.revision,
            };
            let kind = observer.get_type(&stored.token_type).await.unwrap();
            let revision = kind.expect("a registered type").revision;
            observer
                .insert(&stored, revision, actor, 0, &audit)
                .await
                .unwrap();
            handles.push(Handle {
                id: stored.id.to_string(),
                secret: secret.expose().to_owned(),
                old_secret: None,
            });
        }
        let mut server = Self {
            handles,
            app,
            client,
            store: observer,
            start,
            last: Default::default(),
        };
        server.last = server.snapshot().await;
        server.check_state(model, &server.last.0);
        server
    }

    /// Every token and every audit event but failed authentications, with the usage
    /// bookkeeping (written in batches, in the background) left out.
    async fn snapshot(&self) -> (Vec<Stored>, Vec<StoredEvent>) {
        let mut tokens = self
            .store
            .list(&ListQuery {
                limit: 10_000,
                now: Utc::now(),
                ..Default::default()
            })
            .await
            .unwrap();
        for token in &mut tokens {
            token.use_count = 0;
            token.last_used_time = None;
            token.last_used_ip = None;
        }
        let events = self
            .store
            .list_audit(&AuditQuery {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action != "authentication_failed")
            .collect();
        (tokens, events)
    }

    /// Every token in the store equals the model's, field for field.
    fn check_state(&self, model: &Model, stored: &[Stored]) {
        let live: Vec<usize> = (0..model.tokens.len())
            .filter(|i| !model.tokens[*i].deleted)
            .collect();
        assert_eq!(
            stored.len(),
            live.len(),
            "the tokens in the store: {stored:#?}"
        );
        for i in live {
            let want = &model.tokens[i];
            let got = stored
                .iter()
                .find(|t| t.id.to_string() == self.handles[i].id)
                .unwrap_or_else(|| panic!("token {i} is missing from the store"));
            let (power, uses, enabled) = observed(got, self.start);
            let reported = got.secret_reported_time.is_some();
            assert_eq!(
                (&power, uses, enabled, reported, got.owner.as_str()),
                (
                    &want.power,
                    want.uses,
                    want.enabled,
                    want.reported,
                    want.owner
                ),
                "token {i} differs from the model"
            );
            let created_by = want.created_by.map(|c| self.handles[c].id.clone());
            assert_eq!(
                got.created_by.map(|id| id.to_string()),
                created_by,
                "token {i}"
            );
        }
    }

    async fn apply(&mut self, before: &Model, after: &Model, call: &Call) {
        let mut client = self.client.clone();
        let secret = |i: usize| self.handles[i].secret.clone();
        let outcome: Result<Option<(usize, Token, Option<String>)>, tonic::Status>;
        let mut counts = None;
        match call.clone() {
            Call::Create {
                caller,
                owner,
                spec,
            } => {
                let name = format!("t{}", self.handles.len());
                outcome = client
                    .create_token(request_as(
                        &secret(caller),
                        CreateTokenRequest {
                            token: Some(pb_spec(&spec, self.start, name, owner)),
                            ttl: None,
                        },
                    ))
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        Some((caller, r.token.unwrap(), Some(r.secret)))
                    });
            }
            Call::Update {
                caller,
                target,
                change,
            } => {
                let mut token = Token {
                    id: self.handles[target].id.clone(),
                    ..Default::default()
                };
                let start = self.start;
                let path = match change {
                    Change::Permissions(p) => {
                        token.permissions = p.iter().map(|p| p.to_string()).collect();
                        "permissions"
                    }
                    Change::ReadOnly(v) => {
                        token.read_only = v;
                        "read_only"
                    }
                    Change::Expiry(h) => {
                        token.expire_time = h.map(|h| timestamp(start, h));
                        "expire_time"
                    }
                    Change::Nets(n) => {
                        token.allowed_cidrs = n.iter().map(|n| NETS[*n].into()).collect();
                        "allowed_cidrs"
                    }
                    Change::Hosts(h) => {
                        token.allowed_hosts = h.iter().map(|h| HOSTS[*h].into()).collect();
                        "allowed_hosts"
                    }
                    Change::Bindings(team, bound) => {
                        token.bindings = bindings(team, bound);
                        "bindings"
                    }
                    Change::MaxUses(m) => {
                        token.max_uses = m.unwrap_or(0);
                        "max_uses"
                    }
                    Change::Rate(r) => {
                        token.rate_limit = r.map(rate);
                        "rate_limit"
                    }
                    Change::Kind(k) => {
                        token.r#type = k.name().into();
                        "type"
                    }
                    Change::Description => {
                        token.description = "changed".into();
                        "description"
                    }
                };
                outcome = client
                    .update_token(request_as(
                        &secret(caller),
                        UpdateTokenRequest {
                            token: Some(token),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec![path.into()],
                            }),
                        },
                    ))
                    .await
                    .map(|r| Some((caller, r.into_inner(), None)));
            }
            Call::SetEnabled {
                caller,
                target,
                enabled,
            } => {
                outcome = client
                    .set_token_enabled(request_as(
                        &secret(caller),
                        SetTokenEnabledRequest {
                            id: self.handles[target].id.clone(),
                            enabled,
                        },
                    ))
                    .await
                    .map(|r| Some((caller, r.into_inner(), None)));
            }
            Call::Delete { caller, target } => {
                outcome = client
                    .delete_token(request_as(
                        &secret(caller),
                        DeleteTokenRequest {
                            id: self.handles[target].id.clone(),
                        },
                    ))
                    .await
                    .map(|_| None);
            }
            Call::Rotate {
                caller,
                target,
                grace,
            } => {
                outcome = client
                    .rotate_token(request_as(
                        &secret(caller),
                        RotateTokenRequest {
                            id: self.handles[target].id.clone(),
                            grace_period: grace.then_some(prost_types::Duration {
                                seconds: GRACE_SECONDS,
                                nanos: 0,
                            }),
                        },
                    ))
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        Some((caller, r.token.unwrap(), Some(r.secret)))
                    });
            }
            Call::Revoke {
                caller,
                by,
                include_caller,
            } => {
                let mut request = RevokeTokensRequest {
                    include_caller,
                    ..Default::default()
                };
                match by {
                    RevokeBy::Owner(owner) => request.owner = owner.into(),
                    RevokeBy::Kind(kind) => request.r#type = kind.name().into(),
                    RevokeBy::CreatedBy(root) => request.created_by = self.handles[root].id.clone(),
                }
                let answer = client
                    .revoke_tokens(request_as(&secret(caller), request))
                    .await;
                counts = answer
                    .as_ref()
                    .ok()
                    .map(|r| (r.get_ref().revoked_count, r.get_ref().skipped_count));
                outcome = answer.map(|_| None);
            }
            Call::WithOldSecret { target } => {
                let old = self.handles[target]
                    .old_secret
                    .clone()
                    .expect("a graced secret");
                outcome = client
                    .get_token(request_as(
                        &old,
                        GetTokenRequest {
                            id: self.handles[target].id.clone(),
                        },
                    ))
                    .await
                    .map(|r| Some((target, r.into_inner(), None)));
                let status = outcome
                    .as_ref()
                    .expect_err("a rotated-out secret manages nothing");
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            }
            Call::Report { target, previous } => {
                let handle = &self.handles[target];
                let secret = match previous {
                    true => handle.old_secret.clone().expect("a graced secret"),
                    false => handle.secret.clone(),
                };
                let answer = LeakServiceClient::new(self.app.channel.clone())
                    .report_leaked_tokens(ReportLeakedTokensRequest {
                        secrets: vec![secret],
                        ..Default::default()
                    })
                    .await;
                if let Ok(answer) = &answer {
                    let ours = !before.tokens[target].deleted;
                    assert_eq!(answer.get_ref().revoked, u32::from(ours), "{answer:?}");
                }
                outcome = answer.map(|_| None);
            }
        }

        let now = self.snapshot().await;
        // What the server answered, for messages: never a secret it handed out.
        let answered = match &outcome {
            Ok(Some((_, token, _))) => format!("Ok(token {})", token.id),
            Ok(None) => "Ok".to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        match (&after.expect, &outcome) {
            (Expect::Refused, Err(_)) => {
                assert_eq!(
                    now, self.last,
                    "a refused call changed something: {answered}"
                );
            }
            (Expect::Allowed, Ok(answer)) => {
                if let Some((caller, token, secret)) = answer {
                    // What the caller made, changed or was handed a secret of, it covers,
                    // as the store has it now.
                    let caller_before = &before.tokens[*caller];
                    let stored = now
                        .0
                        .iter()
                        .find(|t| t.id.to_string() == token.id)
                        .expect("the token is stored");
                    let (power, uses, enabled) = observed(stored, self.start);
                    let seen = ModelToken {
                        power,
                        uses,
                        enabled,
                        ..caller_before.clone()
                    };
                    assert!(
                        caller_before.covers(&seen),
                        "token {caller} left {token:#?} with power it lacks"
                    );
                    self.record(call, token, secret.clone());
                }
                if let Call::Rotate { .. } | Call::Create { .. } = call {
                    assert!(answer.is_some());
                }
            }
            (Expect::Revoked { revoked, skipped }, Ok(_)) => {
                assert_eq!(counts, Some((*revoked, *skipped)), "revoked, skipped");
            }
            (expect, _) => {
                panic!("the model expects {expect:?}, the server answered {answered}")
            }
        }
        self.check_state(after, &now.0);
        self.last = now;
    }

    /// Keeps the ids and secrets the server handed out.
    fn record(&mut self, call: &Call, token: &Token, secret: Option<String>) {
        match call {
            Call::Create { .. } => self.handles.push(Handle {
                id: token.id.clone(),
                secret: secret.expect("a new secret"),
                old_secret: None,
            }),
            Call::Rotate { target, grace, .. } => {
                let handle = &mut self.handles[*target];
                let previous = std::mem::replace(&mut handle.secret, secret.expect("a new secret"));
                handle.old_secret = grace.then_some(previous);
            }
            _ => {}
        }
    }
}

/// Which store a run of the model uses.
trait Store {
    const BACKEND: Backend;
}

struct Sqlite;
struct Postgres;

impl Store for Sqlite {
    const BACKEND: Backend = Backend::Sqlite;
}

impl Store for Postgres {
    const BACKEND: Backend = Backend::Postgres;
}

struct PolicyUnderTest<S>(std::marker::PhantomData<S>);

impl<S: Store> StateMachineTest for PolicyUnderTest<S> {
    type SystemUnderTest = (Server, Model);
    type Reference = PolicyModel;

    fn init_test(model: &Model) -> (Server, Model) {
        (
            runtime().block_on(Server::start(model, S::BACKEND)),
            model.clone(),
        )
    }

    fn apply((mut server, before): (Server, Model), after: &Model, call: Call) -> (Server, Model) {
        runtime().block_on(server.apply(&before, after, &call));
        (server, after.clone())
    }

    fn teardown((server, _): (Server, Model), _: Model) {
        runtime().block_on(async move {
            server.store.close().await;
            server.app.stop().await;
        });
    }
}

fn cases(variable: &str, default: u32) -> u32 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Regressions are not written into the source tree; a failure prints its sequence.
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config(cases("TA_MODEL_CASES", 1000)))]
    #[test]
    fn policy_model_sqlite(sequential 1..12 => PolicyUnderTest<Sqlite>);
}

prop_state_machine! {
    #![proptest_config(config(cases("TA_MODEL_PG_CASES", 40)))]
    #[test]
    fn policy_model_postgres(sequential 1..12 => PolicyUnderTest<Postgres>);
}
