//! Authorization on Cedar: the Latchkey schema, stored-policy validation and
//! per-request decisions.
//!
//! Stored policies are Cedar text validated in strict mode against
//! [`SCHEMA_TEXT`]. The schema has no namespace, so policies write
//! `User::"alice"`, `Vault::"prod"`, `Action::"read"`.
//!
//! # Policy ids
//!
//! A stored policy is a `(name, text)` pair. Every statement in the text gets
//! an id that appears in [`Decision::policies`]:
//!
//! - a statement annotated `@id("x")` gets `NAME#x`, wherever it sits in the
//!   file, so its id survives edits to the rest of the file. `x` must start
//!   with an ASCII letter and use only ASCII letters, digits, `_`, `.` and
//!   `-` (at most 64 characters), and be unique within the file;
//! - otherwise, a file with a single statement gives it the id `NAME`;
//! - otherwise the statement gets `NAME#N`, `N` being its 1-based position in
//!   the file (counting annotated statements too).
//!
//! The built-in statement [`ROOT_POLICY_ID`] is always present and lets
//! `User::"root"` do everything. Stored names cannot start with `builtin`,
//! so no stored policy can replace it.
//!
//! # Entities
//!
//! Each request is evaluated against entities built from the request alone:
//! the principal (attribute `name`, parents = its groups), the resource
//! (attributes and tags) and, for a secret, its vault (with the vault's tags)
//! as parent and as the `vault` attribute. Group nesting is not known here:
//! only the groups listed in [`Principal::groups`] are ancestors. No action
//! groups exist, so `action in [...]` means "one of".
//!
//! # Cost
//!
//! [`PolicyEngine`] indexes statements by action, resource type and the
//! entities their principal and resource scopes name, so statements scoped
//! to a group, principal, vault or secret cost nothing for requests that do
//! not involve those entities. Statements with an open scope (`principal,
//! action, resource` plus `when`) are evaluated on every request of their
//! action and resource type.
//!
//! The engine reuses the entities of recent (principal, resource) pairs and
//! the contexts of the current second. They are keyed by everything they are
//! built from, so reuse never changes a decision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    RestrictedExpression, Schema, ValidationMode, ValidationWarning, Validator,
};
use serde::{Deserialize, Serialize};

/// The Cedar schema every policy is validated against (Cedar schema syntax).
pub const SCHEMA_TEXT: &str = include_str!("latchkey.cedarschema");

/// Entity id of the principal the root token acts as (`User::"root"`).
pub const ROOT_USER: &str = "root";

/// Id of the built-in statement that permits [`ROOT_USER`] everything.
pub const ROOT_POLICY_ID: &str = "builtin:root";

const ROOT_POLICY_TEXT: &str = r#"permit(principal == User::"root", action, resource);"#;

/// Entity id of the single `System` entity.
pub const SYSTEM_ID: &str = "latchkey";

const MAX_NAME_LEN: usize = 64;

/// Kind of authenticated caller; each kind is a Cedar entity type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person (`User`).
    User,
    /// A machine workload (`Workload`).
    Workload,
    /// An automated agent acting for someone (`Agent`).
    Agent,
    /// A long-lived non-human account (`ServiceAccount`).
    ServiceAccount,
}

impl PrincipalKind {
    /// Every kind, in declaration order.
    pub const ALL: [PrincipalKind; 4] = [
        PrincipalKind::User,
        PrincipalKind::Workload,
        PrincipalKind::Agent,
        PrincipalKind::ServiceAccount,
    ];

    /// Returns the serde spelling: `user`, `workload`, `agent`, `service_account`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Workload => "workload",
            PrincipalKind::Agent => "agent",
            PrincipalKind::ServiceAccount => "service_account",
        }
    }

    /// Returns the Cedar entity type name: `User`, `Workload`, `Agent`,
    /// `ServiceAccount`.
    pub fn entity_type(self) -> &'static str {
        match self {
            PrincipalKind::User => "User",
            PrincipalKind::Workload => "Workload",
            PrincipalKind::Agent => "Agent",
            PrincipalKind::ServiceAccount => "ServiceAccount",
        }
    }

    fn index(self) -> usize {
        match self {
            PrincipalKind::User => 0,
            PrincipalKind::Workload => 1,
            PrincipalKind::Agent => 2,
            PrincipalKind::ServiceAccount => 3,
        }
    }
}

/// The caller of a request, as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    /// Entity type.
    pub kind: PrincipalKind,
    /// Entity id and the `name` attribute.
    pub name: String,
    /// Ids of the `Group` entities the principal is directly in. Duplicates
    /// are ignored.
    pub groups: Vec<String>,
}

impl Principal {
    /// Returns the Cedar entity reference, e.g. `User::"alice"`, escaped as
    /// Cedar prints it so it can be pasted into a policy.
    pub fn uid_string(&self) -> String {
        uid_text(self.kind.entity_type(), &self.name)
    }
}

/// An operation a caller requests. Each variant is a Cedar action
/// (`Action::"read"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read a secret's value (resource: `Secret`).
    Read,
    /// List contents (resource: `System`, `Vault`, `Secret`).
    List,
    /// Create or change (resource: `Vault`, `Secret`).
    Write,
    /// Remove (resource: `Vault`, `Secret`).
    Delete,
    /// Administer (resource: `System`, `Vault`).
    Admin,
    /// Ask for just-in-time access (resource: `Vault`, `Secret`).
    Request,
    /// Approve someone else's request (resource: `Vault`, `Secret`).
    Approve,
    /// Have one's own request approved at once, by policy (resource: `Vault`, `Secret`).
    AutoApprove,
    /// Take short access at once without approval, flagged and announced (resource:
    /// `Vault`, `Secret`).
    BreakGlass,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 9] = [
        Action::Read,
        Action::List,
        Action::Write,
        Action::Delete,
        Action::Admin,
        Action::Request,
        Action::Approve,
        Action::AutoApprove,
        Action::BreakGlass,
    ];

    /// Returns the Cedar action id, which is also the serde spelling: `read`,
    /// `list`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::List => "list",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Admin => "admin",
            Action::Request => "request",
            Action::Approve => "approve",
            Action::AutoApprove => "auto_approve",
            Action::BreakGlass => "break_glass",
        }
    }

    fn index(self) -> usize {
        match self {
            Action::Read => 0,
            Action::List => 1,
            Action::Write => 2,
            Action::Delete => 3,
            Action::Admin => 4,
            Action::Request => 5,
            Action::Approve => 6,
            Action::AutoApprove => 7,
            Action::BreakGlass => 8,
        }
    }
}

/// The entity a request acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resource {
    /// The server as a whole: `System::"latchkey"`.
    System,
    /// A vault: `Vault::"NAME"`.
    Vault {
        /// Vault name (entity id and `name` attribute).
        name: String,
        /// Entity tags (`resource.getTag("env")`).
        tags: BTreeMap<String, String>,
    },
    /// A secret: `Secret::"VAULT/NAME"`, child of `Vault::"VAULT"`.
    Secret {
        /// Name of the containing vault.
        vault: String,
        /// Tags of the containing vault (`resource.vault.getTag("env")`).
        vault_tags: BTreeMap<String, String>,
        /// Secret name within the vault (the `name` attribute).
        name: String,
        /// Entity tags of the secret.
        tags: BTreeMap<String, String>,
    },
}

impl Resource {
    /// Returns the Cedar entity reference: `System::"latchkey"`,
    /// `Vault::"prod"`, `Secret::"prod/db"`.
    ///
    /// A secret's entity id is `VAULT/SECRET`. When a vault or secret name
    /// contains `/`, that id is ambiguous (`a/b/c` has two readings). Policies
    /// for such names should match `resource.name` and
    /// `resource in Vault::"..."` instead of the secret id.
    pub fn uid_string(&self) -> String {
        match self {
            Resource::System => uid_text("System", SYSTEM_ID),
            Resource::Vault { name, .. } => uid_text("Vault", name),
            Resource::Secret { vault, name, .. } => uid_text("Secret", &secret_id(vault, name)),
        }
    }
}

fn secret_id(vault: &str, name: &str) -> String {
    let mut id = String::with_capacity(vault.len() + 1 + name.len());
    id.push_str(vault);
    id.push('/');
    id.push_str(name);
    id
}

/// Formats an entity reference the way Cedar prints it (the id escaped with
/// `str::escape_debug`).
fn uid_text(entity_type: &str, id: &str) -> String {
    format!("{entity_type}::\"{}\"", id.escape_debug())
}

/// Facts about the request that are not entities (the Cedar `context`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestContext {
    /// Kind of token presented: `root`, `user`, `service`, ...
    pub token_kind: String,
    /// Request time, unix seconds.
    pub now: i64,
    /// A live just-in-time grant covers this access.
    pub grant: bool,
    /// The caller completed multi-factor authentication.
    pub mfa: bool,
    /// Seconds of access an access request asks for; 0 for every other request.
    pub duration: i64,
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// The requested operation.
    pub action: Action,
    /// To what.
    pub resource: &'a Resource,
    /// Request facts.
    pub context: &'a RequestContext,
}

/// Outcome of [`PolicyEngine::decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Ids of the determining statements, sorted. These are the matching
    /// permits when allowed, the matching forbids when a forbid denied, and
    /// none for a default deny.
    pub policies: Vec<String>,
    /// Evaluation errors, sorted. A statement whose evaluation fails is
    /// skipped (it neither permits nor forbids); the request is still
    /// decided.
    pub errors: Vec<String>,
}

impl Decision {
    fn deny_with_error(message: String) -> Decision {
        Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![message],
        }
    }
}

/// A position in policy text. Both numbers are 1-based, and the column
/// counts characters (Unicode scalar values), not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Line number.
    pub line: usize,
    /// Column number.
    pub column: usize,
}

/// One problem found in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiagnostic {
    /// Description of the problem (Cedar's wording for parse and validation
    /// errors).
    pub message: String,
    /// How to fix it, when known.
    pub help: Option<String>,
    /// Location of the problem, or `None` when it concerns the whole text.
    pub position: Option<Position>,
}

impl fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.position {
            write!(f, "line {}, column {}: ", p.line, p.column)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "; {help}")?;
        }
        Ok(())
    }
}

struct DiagnosticLines<'a>(&'a [PolicyDiagnostic]);

impl fmt::Display for DiagnosticLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Reasons a policy or policy set is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The stored name breaks the naming rule.
    #[error(
        "invalid policy name `{name}`: {reason}; use 1 to 64 characters from a-z, 0-9, `_`, `.`, `-`, starting with a-z or 0-9 and not with `builtin`"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
        /// The rule the name breaks.
        reason: &'static str,
    },
    /// The text does not parse or does not validate against the schema.
    /// Diagnostics are in source order, one per line in the message.
    #[error("policy `{name}` is invalid: {}", DiagnosticLines(diagnostics))]
    Invalid {
        /// Stored name of the policy.
        name: String,
        /// At least one problem.
        diagnostics: Vec<PolicyDiagnostic>,
    },
    /// Two stored policies share a name.
    #[error("policy name `{name}` is used more than once; give each stored policy its own name")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// The built-in schema or root policy failed to load (a defect in this
    /// build, not in the caller's input).
    #[error("the built-in authorization schema failed to load: {message}; report this as a bug")]
    Builtin {
        /// Cedar's explanation.
        message: String,
    },
    /// Checking could not run because the checker thread failed to start or
    /// panicked.
    #[error(
        "internal error while checking policies: {message}; retry, and report it if it persists"
    )]
    Internal {
        /// Description of the failure.
        message: String,
    },
}

/// Parsed schema and the Cedar names every request needs, built once.
struct Core {
    validator: Validator,
    principal_types: [EntityTypeName; 4],
    group_type: EntityTypeName,
    vault_type: EntityTypeName,
    secret_type: EntityTypeName,
    system_uid: EntityUid,
    actions: [EntityUid; Action::ALL.len()],
    root_policy: Policy,
}

static CORE: LazyLock<Result<Core, String>> = LazyLock::new(load_core);

fn load_core() -> Result<Core, String> {
    let (schema, _warnings) =
        Schema::from_cedarschema_str(SCHEMA_TEXT).map_err(|e| e.to_string())?;
    let ty = |name: &str| EntityTypeName::from_str(name).map_err(|e| e.to_string());
    let action_type = ty("Action")?;
    let actions = Action::ALL
        .map(|a| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str())));
    let root_policy = Policy::parse(Some(PolicyId::new(ROOT_POLICY_ID)), ROOT_POLICY_TEXT)
        .map_err(|e| e.to_string())?;
    Ok(Core {
        validator: Validator::new(schema),
        principal_types: [
            ty("User")?,
            ty("Workload")?,
            ty("Agent")?,
            ty("ServiceAccount")?,
        ],
        group_type: ty("Group")?,
        vault_type: ty("Vault")?,
        secret_type: ty("Secret")?,
        system_uid: EntityUid::from_type_name_and_id(ty("System")?, EntityId::new(SYSTEM_ID)),
        actions,
        root_policy,
    })
}

fn core() -> Result<&'static Core, PolicyError> {
    CORE.as_ref().map_err(|message| PolicyError::Builtin {
        message: message.clone(),
    })
}

/// Checks a stored policy name: 1 to 64 characters from `a-z`, `0-9`, `_`,
/// `.`, `-`, starting with a letter or digit, and not starting with
/// `builtin` (reserved for built-in statements).
pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    let fail = |reason| {
        Err(PolicyError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    let Some(first) = name.bytes().next() else {
        return fail("the name is empty");
    };
    if name.len() > MAX_NAME_LEN {
        return fail("the name is longer than 64 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return fail("the name must start with a-z or 0-9");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
    {
        return fail("the name contains a character outside a-z, 0-9, `_`, `.`, `-`");
    }
    if name.starts_with("builtin") {
        return fail("names starting with `builtin` are reserved");
    }
    Ok(())
}

/// Parses `text` and validates it strictly against the schema, as
/// [`PolicyEngine::new`] would for a stored policy called `name`.
///
/// Returns the number of statements. Besides Cedar's validation errors, a
/// statement that can never apply (for example `action == Action::"read"`
/// with `resource == Vault::"x"`) and strings or identifiers containing
/// bidirectional-override characters are rejected. Templates (`?principal`,
/// `?resource`) are rejected, and so is text nested too deeply (see
/// [`MAX_NESTING`]).
///
/// Runs the Cedar parser and validator on a short-lived thread with a large
/// stack, so the caller's stack size does not matter.
pub fn validate_policy(name: &str, text: &str) -> Result<usize, PolicyError> {
    on_large_stack(|| compile(name, text).map(|statements| statements.len()))
}

/// Stack for the thread that parses and validates policies. Cedar's parser
/// and type checker recurse once per nesting level.
const CHECKER_STACK: usize = 64 << 20;

/// Upper bound on the nesting score of policy text, computed before parsing.
/// Each open bracket counts 4, and each operator (`&&`, `||`, comparisons,
/// arithmetic, `!`, `.`, `if`, `in`, `has`, `like`, `is`) counts 1 until the
/// next `,` at its bracket level. Cedar builds one tree level per operator,
/// and deeper trees can exhaust the stack of the thread that evaluates them.
///
/// NOTE: the weights and the limit are estimates from runs of Cedar 4.14 on
/// 2 MiB threads. Optimised builds evaluated policies at this limit. In
/// unoptimised builds, expressions about 60 operators deep already stop with
/// "recursion limit reached" in [`Decision::errors`], which skips the
/// statement without crashing.
pub const MAX_NESTING: usize = 256;

const BRACKET_WEIGHT: usize = 4;

/// Runs `f` on a scoped thread with [`CHECKER_STACK`] bytes of stack.
fn on_large_stack<T: Send>(
    f: impl FnOnce() -> Result<T, PolicyError> + Send,
) -> Result<T, PolicyError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("latchkey-policy-check".into())
            .stack_size(CHECKER_STACK)
            .spawn_scoped(scope, f)
            .map_err(|e| PolicyError::Internal {
                message: format!("cannot start the policy checker thread: {e}"),
            })?;
        handle.join().unwrap_or_else(|_| {
            Err(PolicyError::Internal {
                message: "the policy checker panicked".into(),
            })
        })
    })
}

/// Rejects text whose nesting score (see [`MAX_NESTING`]) exceeds the limit.
/// Strings and `//` comments are skipped, and unbalanced brackets are left
/// for Cedar to report.
fn check_nesting(text: &str) -> Result<(), PolicyDiagnostic> {
    // Operators seen in the current element of each open bracket. Index 0 is
    // outside all brackets.
    let mut levels: Vec<usize> = vec![0];
    let mut score = 0usize;
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        i += 1;
        let mut ops = 0;
        match b {
            b'"' => {
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'/' if bytes.get(i) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                levels.push(0);
                score += BRACKET_WEIGHT;
            }
            b')' | b']' | b'}' if levels.len() > 1 => {
                let inner = levels.pop().unwrap_or_default();
                score = score.saturating_sub(BRACKET_WEIGHT + inner);
            }
            b',' | b';' => {
                if let Some(current) = levels.last_mut() {
                    score = score.saturating_sub(*current);
                    *current = 0;
                }
            }
            b'&' | b'|' | b'=' if bytes.get(i) == Some(&b) => {
                i += 1;
                ops = 1;
            }
            b'!' | b'<' | b'>' => {
                if bytes.get(i) == Some(&b'=') {
                    i += 1;
                }
                ops = 1;
            }
            b'+' | b'-' | b'*' | b'.' => ops = 1,
            b if b.is_ascii_alphabetic() || b == b'_' => {
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    i += 1;
                }
                let word = bytes.get(start..i).unwrap_or_default();
                if matches!(word, b"if" | b"in" | b"has" | b"like" | b"is") {
                    ops = 1;
                }
            }
            _ => {}
        }
        if ops > 0 {
            if let Some(current) = levels.last_mut() {
                *current += ops;
            }
            score += ops;
        }
        if score > MAX_NESTING {
            return Err(PolicyDiagnostic {
                message: format!("the text nests too deeply here (more than {MAX_NESTING} levels of brackets and operators)"),
                help: Some("split long `&&` or `||` chains into separate statements, or test membership with a set and `.contains(...)`".into()),
                position: Some(position_at(text, start)),
            });
        }
    }
    Ok(())
}

/// Compiles one stored policy into its renamed, validated statements. Call
/// it on a large stack (see [`on_large_stack`]).
fn compile(name: &str, text: &str) -> Result<Vec<Policy>, PolicyError> {
    validate_name(name)?;
    let core = core()?;
    let invalid = |diagnostics: Vec<PolicyDiagnostic>| PolicyError::Invalid {
        name: name.to_owned(),
        diagnostics,
    };
    check_nesting(text).map_err(|d| invalid(vec![d]))?;

    let parsed = match PolicySet::from_str(text) {
        Ok(set) => set,
        Err(errors) => {
            let diagnostics = errors
                .iter()
                .map(|e| diagnostic_from(text, &DetailedError::from(e)))
                .collect();
            return Err(invalid(sorted(diagnostics)));
        }
    };

    let Some(statements) = statements_in_order(&parsed, text) else {
        return Err(invalid(vec![PolicyDiagnostic {
            message: "internal error: Cedar returned statements without positional ids".into(),
            help: Some("report this as a bug".into()),
            position: None,
        }]));
    };
    if statements.is_empty() {
        return Err(invalid(vec![PolicyDiagnostic {
            message: "the text contains no policy statements".into(),
            help: Some("write at least one `permit(...);` or `forbid(...);` statement".into()),
            position: None,
        }]));
    }

    let mut diagnostics = Vec::new();
    let single = statements.len() == 1;
    let mut seen = HashSet::with_capacity(statements.len());
    let mut renamed = Vec::with_capacity(statements.len());
    for (index, (statement, offset)) in statements.iter().enumerate() {
        let offset = *offset;
        let Some(statement) = statement else {
            diagnostics.push(PolicyDiagnostic {
                message: "the statement is a template (it uses `?principal` or `?resource`)".into(),
                help: Some("write the entity itself, e.g. `principal == User::\"alice\"`".into()),
                position: Some(position_at(text, offset)),
            });
            continue;
        };
        let id = match statement.annotation("id") {
            Some(tag) => {
                if let Err(problem) = check_id_annotation(tag) {
                    diagnostics.push(PolicyDiagnostic {
                        message: format!("`@id(\"{}\")` {problem}", tag.escape_debug()),
                        help: Some(
                            "start with a letter and use at most 64 letters, digits, `_`, `.`, `-`"
                                .into(),
                        ),
                        position: Some(position_at(text, offset)),
                    });
                    continue;
                }
                format!("{name}#{tag}")
            }
            None if single => name.to_owned(),
            None => format!("{name}#{}", index + 1),
        };
        if !seen.insert(id.clone()) {
            diagnostics.push(PolicyDiagnostic {
                message: format!("statement id `{id}` is used twice in this policy"),
                help: Some("give each `@id(...)` annotation a different value".into()),
                position: Some(position_at(text, offset)),
            });
            continue;
        }
        renamed.push(statement.new_id(PolicyId::new(id)));
    }
    if !diagnostics.is_empty() {
        return Err(invalid(sorted(diagnostics)));
    }

    let set = match PolicySet::from_policies(renamed.iter().cloned()) {
        Ok(set) => set,
        Err(e) => {
            return Err(invalid(vec![PolicyDiagnostic {
                message: e.to_string(),
                help: None,
                position: None,
            }]));
        }
    };
    let result = core.validator.validate(&set, ValidationMode::Strict);
    let mut diagnostics: Vec<PolicyDiagnostic> = result
        .validation_errors()
        .map(|e| diagnostic_from(text, &DetailedError::from(e)))
        .collect();
    // A statement with an unknown type or action also draws "no applicable
    // action" and "impossible" warnings, so only the root cause is reported.
    let with_errors: HashSet<&PolicyId> =
        result.validation_errors().map(|e| e.policy_id()).collect();
    let inapplicable: HashSet<&PolicyId> = result
        .validation_warnings()
        .filter(|w| matches!(w, ValidationWarning::InvalidActionApplication(_)))
        .map(|w| w.policy_id())
        .collect();
    for warning in result.validation_warnings() {
        let id = warning.policy_id();
        let help = match warning {
            _ if with_errors.contains(id) => continue,
            ValidationWarning::InvalidActionApplication(_) => ACTION_HELP,
            ValidationWarning::ImpossiblePolicy(_) if !inapplicable.contains(id) => {
                "the statement can never match; fix its conditions or remove it"
            }
            ValidationWarning::BidiCharsInString(_)
            | ValidationWarning::BidiCharsInIdentifier(_) => {
                "remove the bidirectional-override characters"
            }
            _ => continue,
        };
        let mut diagnostic = diagnostic_from(text, &DetailedError::from(warning));
        diagnostic.help.get_or_insert_with(|| help.to_owned());
        diagnostics.push(diagnostic);
    }
    if diagnostics.is_empty() {
        Ok(renamed)
    } else {
        Err(invalid(sorted(diagnostics)))
    }
}

const ACTION_HELP: &str = "`read` applies to Secret; `list` to System, Vault, Secret; `admin` to System, Vault; `write`, `delete`, `request`, `approve`, `auto_approve`, `break_glass` to Vault, Secret";

fn check_id_annotation(tag: &str) -> Result<(), &'static str> {
    let Some(first) = tag.chars().next() else {
        return Err("is empty");
    };
    if tag.len() > MAX_NAME_LEN {
        return Err("is longer than 64 characters");
    }
    if !first.is_ascii_alphabetic() {
        return Err("does not start with an ASCII letter");
    }
    if !tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("contains a character other than letters, digits, `_`, `.`, `-`");
    }
    Ok(())
}

/// Returns the statements in file order with their byte offsets, `None`
/// marking a template. Cedar numbers parsed statements `policy0`,
/// `policy1`, ... in file order (templates included) and keeps each one's
/// exact source text, so offsets are found by searching forward. Returns
/// `None` if the numbering differs.
///
/// NOTE: a comment that repeats a later statement's exact text makes that
/// statement's offset point into the comment.
fn statements_in_order<'s>(
    set: &'s PolicySet,
    text: &str,
) -> Option<Vec<(Option<&'s Policy>, usize)>> {
    let number = |id: &PolicyId| -> Option<usize> {
        AsRef::<str>::as_ref(id)
            .strip_prefix("policy")?
            .parse()
            .ok()
    };
    let mut numbered = set
        .policies()
        .map(|p| Some((number(p.id())?, Some(p), p.to_cedar())))
        .chain(
            set.templates()
                .map(|t| Some((number(t.id())?, None, Some(t.to_cedar())))),
        )
        .collect::<Option<Vec<_>>>()?;
    numbered.sort_unstable_by_key(|(n, _, _)| *n);
    let mut from = 0;
    Some(
        numbered
            .into_iter()
            .map(|(_, policy, source)| {
                let found = source.and_then(|source| {
                    let offset = from + text.get(from..)?.find(&source)?;
                    Some((offset, offset + source.len()))
                });
                let offset = match found {
                    Some((offset, end)) => {
                        from = end;
                        offset
                    }
                    None => from,
                };
                (policy, offset)
            })
            .collect(),
    )
}

fn diagnostic_from(text: &str, detail: &DetailedError) -> PolicyDiagnostic {
    let position = detail
        .source_locations
        .iter()
        .map(|label| label.loc.start)
        .min()
        .map(|offset| position_at(text, offset));
    PolicyDiagnostic {
        message: strip_policy_prefix(&detail.message).to_owned(),
        help: detail
            .help
            .as_deref()
            .map(|h| strip_policy_prefix(h).to_owned()),
        position,
    }
}

/// Removes the ``for policy `ID`, `` or ``for policy `ID`: `` prefix that
/// Cedar puts on some validation texts, because the position already
/// identifies the statement.
fn strip_policy_prefix(message: &str) -> &str {
    let Some(rest) = message.strip_prefix("for policy `") else {
        return message;
    };
    let Some((_, tail)) = rest.split_once('`') else {
        return message;
    };
    tail.strip_prefix(", ")
        .or_else(|| tail.strip_prefix(": "))
        .unwrap_or(message)
}

fn sorted(mut diagnostics: Vec<PolicyDiagnostic>) -> Vec<PolicyDiagnostic> {
    diagnostics.sort_by_key(|d| d.position.map(|p| (p.line, p.column)));
    diagnostics
}

/// Returns the 1-based line and character column of byte `offset` in `text`.
/// An offset past the end or inside a character moves back to a character
/// boundary.
fn position_at(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before.get(line_start..).unwrap_or_default().chars().count() + 1,
    }
}

/// Validated policies ready to decide requests. The engine is immutable, so
/// share it behind an `Arc` and build a new one when the stored policies
/// change.
///
/// Statements are indexed so a request is evaluated only against those that
/// could apply: first by the (action, resource type) pairs their scope
/// allows, then by the entity their principal scope names (`principal == X`,
/// `principal in X`), then by the entity their resource scope names
/// (`resource == X`, `resource in X`). So a group with a statement per vault
/// costs one statement per request, not one per vault. The index only
/// narrows the search. Cedar still evaluates each candidate's full scope and
/// conditions, and the combined decision equals Cedar's over all statements.
pub struct PolicyEngine {
    core: &'static Core,
    /// Indexed by [`bucket`].
    buckets: Vec<Bucket>,
    statements: usize,
    authorizer: Authorizer,
    entities: EntityCache,
    contexts: ContextCache,
    /// The statements of each stored policy by name, with its text, for
    /// [`PolicyEngine::rebuild`]. Engines rebuilt from this one share them.
    compiled: HashMap<Arc<str>, Compiled>,
}

/// A stored policy's text and its validated statements.
type Compiled = (Arc<str>, Arc<[Policy]>);

/// The statements of one (action, resource type) pair.
#[derive(Default)]
struct Bucket {
    /// Statements whose principal scope names no entity.
    any_principal: Slices,
    /// Statements by the entity their principal scope names. Boxed: with a thousand
    /// groups, the spare capacity of the map would otherwise hold a thousand empty
    /// `Slices`.
    by_principal: HashMap<EntityUid, Box<Slices>>,
}

/// Statements with the same principal anchor, by their resource anchor.
#[derive(Default)]
struct Slices {
    /// Statements whose resource scope names no entity.
    any_resource: PolicySet,
    /// Statements by the entity their resource scope names, boxed like `by_principal`.
    by_resource: HashMap<EntityUid, Box<PolicySet>>,
}

impl Slices {
    /// Returns the sets whose statements may apply to a request on a resource
    /// with these anchors.
    fn sets<'s>(
        &'s self,
        resource_anchors: &'s [EntityUid],
    ) -> impl Iterator<Item = &'s PolicySet> {
        std::iter::once(&self.any_resource).chain(
            resource_anchors
                .iter()
                .filter_map(|a| self.by_resource.get(a).map(|set| &**set)),
        )
    }
}

/// Resource entity types, in bucket order.
const RESOURCE_TYPES: usize = 3;
const SYSTEM: usize = 0;
const VAULT: usize = 1;
const SECRET: usize = 2;

fn bucket(action: usize, resource_type: usize) -> usize {
    action * RESOURCE_TYPES + resource_type
}

/// A request in Cedar's terms with the entities it is evaluated against.
struct Built {
    request: Request,
    prepared: Arc<Prepared>,
}

/// The parts of a request that depend only on its principal and resource:
/// the entities, their uids, and the entities statements may be anchored to.
struct Prepared {
    principal: Principal,
    resource: Resource,
    entities: Entities,
    principal_uid: EntityUid,
    resource_uid: EntityUid,
    /// The groups and the principal; all distinct.
    principal_anchors: Vec<EntityUid>,
    /// The vault (for a secret) and the resource; distinct.
    resource_anchors: Vec<EntityUid>,
}

/// Pairs of principal and resource kept per generation of [`EntityCache`].
const ENTITY_CACHE_GENERATION: usize = 256;

/// Prepared entities of recent (principal, resource) pairs.
///
/// Building the entities (and Cedar's transitive closure over them) is most
/// of the cost of a decision. They are a function of the principal and the
/// resource alone, so an entry is found by the full content of both and is
/// never stale. A principal whose groups changed, or a secret whose tags
/// changed, looks up another entry. The cache only bounds its memory. It
/// keeps two generations of at most [`ENTITY_CACHE_GENERATION`] entries each:
/// when the current one is full it becomes the previous one, and an entry
/// found in the previous one moves back to the current one, so pairs in
/// steady use stay.
struct EntityCache {
    hasher: RandomState,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<u64, Arc<Prepared>>,
    previous: HashMap<u64, Arc<Prepared>>,
}

impl Generations {
    fn insert(&mut self, key: u64, prepared: Arc<Prepared>) {
        if self.current.len() >= ENTITY_CACHE_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, prepared);
    }
}

impl EntityCache {
    fn new() -> EntityCache {
        EntityCache {
            hasher: RandomState::new(),
            generations: Mutex::new(Generations::default()),
        }
    }

    /// Entries are only ever added whole, so one left by a panicking holder
    /// is still sound.
    fn lock(&self) -> MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get_or_prepare(
        &self,
        principal: &Principal,
        resource: &Resource,
        prepare: impl FnOnce() -> Result<Prepared, String>,
    ) -> Result<Arc<Prepared>, String> {
        let key = self.hasher.hash_one((principal, resource));
        let same = |p: &Prepared| p.principal == *principal && p.resource == *resource;
        {
            let mut generations = self.lock();
            if let Some(found) = generations.current.get(&key).filter(|p| same(p)) {
                return Ok(Arc::clone(found));
            }
            if let Some(found) = generations.previous.remove(&key).filter(|p| same(p)) {
                generations.insert(key, Arc::clone(&found));
                return Ok(found);
            }
        }
        let prepared = Arc::new(prepare()?);
        self.lock().insert(key, Arc::clone(&prepared));
        Ok(prepared)
    }
}

/// Contexts kept by [`ContextCache`]: one per token kind, grant and MFA
/// combination in use.
const CONTEXT_CACHE_ENTRIES: usize = 16;

/// Cedar contexts of recent requests. A context contains the request time in
/// whole seconds, so one serves every request with the same facts within
/// that second.
#[derive(Default)]
struct ContextCache {
    recent: Mutex<Vec<(RequestContext, Context)>>,
}

impl ContextCache {
    fn get_or_build(&self, context: &RequestContext) -> Result<Context, String> {
        let lock = || self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, found)) = lock().iter().find(|(facts, _)| facts == context) {
            return Ok(found.clone());
        }
        let built = build_context(context)?;
        let mut recent = lock();
        let same_kind = |facts: &RequestContext| {
            facts.token_kind == context.token_kind
                && facts.grant == context.grant
                && facts.mfa == context.mfa
        };
        let entry = (context.clone(), built.clone());
        match recent.iter_mut().find(|(facts, _)| same_kind(facts)) {
            Some(slot) => *slot = entry,
            None => {
                if recent.len() >= CONTEXT_CACHE_ENTRIES {
                    recent.remove(0);
                }
                recent.push(entry);
            }
        }
        Ok(built)
    }
}

fn build_context(context: &RequestContext) -> Result<Context, String> {
    Context::from_pairs([
        (
            "token_kind".to_owned(),
            RestrictedExpression::new_string(context.token_kind.clone()),
        ),
        (
            "now".to_owned(),
            RestrictedExpression::new_long(context.now),
        ),
        (
            "grant".to_owned(),
            RestrictedExpression::new_bool(context.grant),
        ),
        (
            "mfa".to_owned(),
            RestrictedExpression::new_bool(context.mfa),
        ),
        (
            "duration".to_owned(),
            RestrictedExpression::new_long(context.duration),
        ),
    ])
    .map_err(|e| format!("cannot build request context: {e}"))
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("statements", &self.policy_count())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Builds an engine from stored `(name, text)` pairs plus the built-in
    /// statements.
    ///
    /// Each pair is checked as by [`validate_policy`] (on a large-stack
    /// thread), and the first rejected one is returned as the error. Names
    /// must be unique.
    pub fn new<'a>(
        policies: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<PolicyEngine, PolicyError> {
        let policies: Vec<(&str, &str)> = policies.into_iter().collect();
        on_large_stack(|| PolicyEngine::build_engine(policies, None))
    }

    /// Builds an engine like [`PolicyEngine::new`], taking the statements of
    /// each policy whose name and text are unchanged from this engine instead
    /// of parsing and validating them again. Checking a policy depends only on
    /// its name and text, so the result is the same, and a change to one of
    /// many policies costs the checking of that one.
    pub fn rebuild<'a>(
        &self,
        policies: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<PolicyEngine, PolicyError> {
        let policies: Vec<(&str, &str)> = policies.into_iter().collect();
        on_large_stack(|| PolicyEngine::build_engine(policies, Some(&self.compiled)))
    }

    fn build_engine(
        policies: Vec<(&str, &str)>,
        previous: Option<&HashMap<Arc<str>, Compiled>>,
    ) -> Result<PolicyEngine, PolicyError> {
        let core = core()?;
        let mut engine = PolicyEngine {
            core,
            buckets: (0..Action::ALL.len() * RESOURCE_TYPES)
                .map(|_| Bucket::default())
                .collect(),
            statements: 0,
            authorizer: Authorizer::new(),
            entities: EntityCache::new(),
            contexts: ContextCache::default(),
            compiled: HashMap::with_capacity(policies.len()),
        };
        engine
            .insert(&core.root_policy)
            .map_err(|message| PolicyError::Builtin { message })?;
        let mut names = HashSet::new();
        for (name, text) in policies {
            let compiled = match previous.and_then(|p| p.get_key_value(name)) {
                Some((old_name, (old_text, statements))) if &**old_text == text => (
                    Arc::clone(old_name),
                    (Arc::clone(old_text), Arc::clone(statements)),
                ),
                _ => (
                    Arc::from(name),
                    (Arc::from(text), Arc::from(compile(name, text)?)),
                ),
            };
            let statements = Arc::clone(&compiled.1.1);
            if !names.insert(name) {
                return Err(PolicyError::DuplicateName {
                    name: name.to_owned(),
                });
            }
            for statement in statements.iter() {
                engine
                    .insert(statement)
                    .map_err(|message| PolicyError::Invalid {
                        name: name.to_owned(),
                        diagnostics: vec![PolicyDiagnostic {
                            message,
                            help: None,
                            position: None,
                        }],
                    })?;
            }
            engine.compiled.insert(compiled.0, compiled.1);
        }
        Ok(engine)
    }

    /// Adds a validated statement to the index.
    fn insert(&mut self, statement: &Policy) -> Result<(), String> {
        let core = self.core;
        let actions: [bool; Action::ALL.len()] = match statement.action_constraint() {
            ActionConstraint::Any => [true; Action::ALL.len()],
            ActionConstraint::Eq(uid) => core.actions.each_ref().map(|a| *a == uid),
            ActionConstraint::In(uids) => core.actions.each_ref().map(|a| uids.contains(a)),
        };
        let of_type = |t: &EntityTypeName| {
            let mut kinds = [false; RESOURCE_TYPES];
            kinds[SYSTEM] = t == core.system_uid.type_name();
            kinds[VAULT] = *t == core.vault_type;
            kinds[SECRET] = *t == core.secret_type;
            kinds
        };
        let (resources, resource_anchor) = match statement.resource_constraint() {
            ResourceConstraint::Any => ([true; RESOURCE_TYPES], None),
            ResourceConstraint::Is(t) => (of_type(&t), None),
            ResourceConstraint::Eq(uid) => (of_type(uid.type_name()), Some(uid)),
            ResourceConstraint::IsIn(t, uid) => (of_type(&t), Some(uid)),
            ResourceConstraint::In(uid) => {
                // Secrets are the only resources with a parent (their vault).
                let mut kinds = of_type(uid.type_name());
                kinds[SECRET] |= kinds[VAULT];
                (kinds, Some(uid))
            }
        };
        let principal_anchor = match statement.principal_constraint() {
            PrincipalConstraint::Eq(uid)
            | PrincipalConstraint::In(uid)
            | PrincipalConstraint::IsIn(_, uid) => Some(uid),
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
        };
        for (a, _) in actions.iter().enumerate().filter(|(_, on)| **on) {
            for (r, _) in resources.iter().enumerate().filter(|(_, on)| **on) {
                let Some(bucket) = self.buckets.get_mut(bucket(a, r)) else {
                    continue;
                };
                let slices = match &principal_anchor {
                    Some(uid) => &mut **bucket.by_principal.entry(uid.clone()).or_default(),
                    None => &mut bucket.any_principal,
                };
                let set = match &resource_anchor {
                    Some(uid) => &mut **slices.by_resource.entry(uid.clone()).or_default(),
                    None => &mut slices.any_resource,
                };
                set.add(statement.clone()).map_err(|e| e.to_string())?;
            }
        }
        self.statements += 1;
        Ok(())
    }

    /// Returns the number of statements, built-in ones included.
    pub fn policy_count(&self) -> usize {
        self.statements
    }

    /// Decides one request. Denies, with the reason in [`Decision::errors`],
    /// if the request cannot be expressed to Cedar or if Cedar panics, so the
    /// caller never sees a panic (with the default `panic = "unwind"`).
    pub fn decide(&self, request: &AccessRequest<'_>) -> Decision {
        // The engine is never mutated, so a panic cannot leave it half-updated.
        std::panic::catch_unwind(AssertUnwindSafe(|| self.decide_unguarded(request)))
            .unwrap_or_else(|_| {
                Decision::deny_with_error("internal error: the policy evaluator panicked".into())
            })
    }

    fn decide_unguarded(&self, request: &AccessRequest<'_>) -> Decision {
        let resource_type = match request.resource {
            Resource::System => SYSTEM,
            Resource::Vault { .. } => VAULT,
            Resource::Secret { .. } => SECRET,
        };
        let Some(bucket) = self
            .buckets
            .get(bucket(request.action.index(), resource_type))
        else {
            return Decision::deny_with_error("internal error: no policy bucket".into());
        };
        let built = match self.build(request) {
            Ok(built) => built,
            Err(message) => return Decision::deny_with_error(message),
        };

        // Each statement sits in one set per bucket and anchors are
        // distinct, so no statement is evaluated twice.
        let prepared = &built.prepared;
        let resource_anchors = prepared.resource_anchors.as_slice();
        let sets = std::iter::once(&bucket.any_principal)
            .chain(
                prepared
                    .principal_anchors
                    .iter()
                    .filter_map(|a| bucket.by_principal.get(a).map(|slices| &**slices)),
            )
            .flat_map(|slices| slices.sets(resource_anchors))
            .filter(|set| !set.is_empty());
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        let mut errors = Vec::new();
        for set in sets {
            let response = self
                .authorizer
                .is_authorized(&built.request, set, &prepared.entities);
            let diagnostics = response.diagnostics();
            let reasons = diagnostics.reason().map(ToString::to_string);
            match response.decision() {
                cedar_policy::Decision::Allow => permits.extend(reasons),
                cedar_policy::Decision::Deny => forbids.extend(reasons),
            }
            errors.extend(diagnostics.errors().map(ToString::to_string));
        }

        // Any satisfied forbid denies. Otherwise any satisfied permit allows.
        let allowed = forbids.is_empty() && !permits.is_empty();
        let mut policies = if forbids.is_empty() { permits } else { forbids };
        policies.sort_unstable();
        errors.sort_unstable();
        Decision {
            allowed,
            policies,
            errors,
        }
    }

    fn build(&self, request: &AccessRequest<'_>) -> Result<Built, String> {
        let prepared = self
            .entities
            .get_or_prepare(request.principal, request.resource, || {
                self.prepare(request.principal, request.resource)
            })?;
        let context = self.contexts.get_or_build(request.context)?;
        let action = self
            .core
            .actions
            .get(request.action.index())
            .ok_or("internal error: unknown action index")?;
        let cedar_request = Request::new(
            prepared.principal_uid.clone(),
            action.clone(),
            prepared.resource_uid.clone(),
            context,
            None,
        )
        .map_err(|e| format!("cannot build request: {e}"))?;
        Ok(Built {
            request: cedar_request,
            prepared,
        })
    }

    fn prepare(&self, principal: &Principal, resource: &Resource) -> Result<Prepared, String> {
        let core = self.core;
        let mut entities = Vec::with_capacity(principal.groups.len() + 3);
        let mut principal_anchors = Vec::with_capacity(principal.groups.len() + 1);
        let mut resource_anchors = Vec::with_capacity(2);

        let mut groups: Vec<&str> = principal.groups.iter().map(String::as_str).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut parents = Vec::with_capacity(groups.len());
        for group in groups {
            let uid =
                EntityUid::from_type_name_and_id(core.group_type.clone(), EntityId::new(group));
            entities.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
            principal_anchors.push(uid.clone());
            parents.push(uid);
        }
        let principal_uid = EntityUid::from_type_name_and_id(
            core.principal_types[principal.kind.index()].clone(),
            EntityId::new(&principal.name),
        );
        principal_anchors.push(principal_uid.clone());
        entities.push(
            Entity::new_with_tags(
                principal_uid.clone(),
                [name_attr(&principal.name)],
                parents,
                [],
            )
            .map_err(|e| format!("cannot build principal entity: {e}"))?,
        );

        let resource_uid = match resource {
            Resource::System => {
                entities.push(Entity::new_no_attrs(
                    core.system_uid.clone(),
                    HashSet::new(),
                ));
                core.system_uid.clone()
            }
            Resource::Vault { name, tags } => self.vault_entity(name, tags, &mut entities)?,
            Resource::Secret {
                vault,
                vault_tags,
                name,
                tags,
            } => {
                let vault_uid = self.vault_entity(vault, vault_tags, &mut entities)?;
                resource_anchors.push(vault_uid.clone());
                let uid = EntityUid::from_type_name_and_id(
                    core.secret_type.clone(),
                    EntityId::new(secret_id(vault, name)),
                );
                entities.push(
                    Entity::new_with_tags(
                        uid.clone(),
                        [
                            name_attr(name),
                            (
                                "vault".to_owned(),
                                RestrictedExpression::new_entity_uid(vault_uid.clone()),
                            ),
                        ],
                        [vault_uid],
                        string_tags(tags),
                    )
                    .map_err(|e| format!("cannot build secret entity: {e}"))?,
                );
                uid
            }
        };
        resource_anchors.push(resource_uid.clone());
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| format!("cannot build request entities: {e}"))?;
        Ok(Prepared {
            principal: principal.clone(),
            resource: resource.clone(),
            entities,
            principal_uid,
            resource_uid,
            principal_anchors,
            resource_anchors,
        })
    }

    fn vault_entity(
        &self,
        name: &str,
        tags: &BTreeMap<String, String>,
        entities: &mut Vec<Entity>,
    ) -> Result<EntityUid, String> {
        let uid =
            EntityUid::from_type_name_and_id(self.core.vault_type.clone(), EntityId::new(name));
        entities.push(
            Entity::new_with_tags(uid.clone(), [name_attr(name)], [], string_tags(tags))
                .map_err(|e| format!("cannot build vault entity: {e}"))?,
        );
        Ok(uid)
    }
}

fn name_attr(name: &str) -> (String, RestrictedExpression) {
    (
        "name".to_owned(),
        RestrictedExpression::new_string(name.to_owned()),
    )
}

fn string_tags(
    tags: &BTreeMap<String, String>,
) -> impl Iterator<Item = (String, RestrictedExpression)> + '_ {
    tags.iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn alice() -> Principal {
        Principal {
            kind: PrincipalKind::User,
            name: "alice".into(),
            groups: vec!["devs".into()],
        }
    }

    fn secret(vault: &str, name: &str, vault_env: &str) -> Resource {
        Resource::Secret {
            vault: vault.into(),
            vault_tags: BTreeMap::from([("env".to_owned(), vault_env.to_owned())]),
            name: name.into(),
            tags: BTreeMap::new(),
        }
    }

    fn ctx(token_kind: &str, grant: bool) -> RequestContext {
        RequestContext {
            token_kind: token_kind.into(),
            now: 1_700_000_000,
            grant,
            mfa: false,
            duration: 0,
        }
    }

    fn decide(
        engine: &PolicyEngine,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        context: &RequestContext,
    ) -> Decision {
        engine.decide(&AccessRequest {
            principal,
            action,
            resource,
            context,
        })
    }

    fn diagnostics(err: PolicyError) -> Vec<PolicyDiagnostic> {
        match err {
            PolicyError::Invalid { diagnostics, .. } => diagnostics,
            other => panic!("expected PolicyError::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn schema_loads_without_warnings() {
        assert!(CORE.is_ok(), "{:?}", CORE.as_ref().err());
        let (_, warnings) = Schema::from_cedarschema_str(SCHEMA_TEXT).unwrap();
        assert_eq!(
            warnings.map(|w| w.to_string()).collect::<Vec<_>>(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn group_membership_scopes_vault() {
        let engine = PolicyEngine::new([(
            "devs-staging",
            r#"permit(principal in Group::"devs", action == Action::"read", resource in Vault::"staging");"#,
        )])
        .unwrap();
        let c = ctx("user", false);
        let staging_db = secret("staging", "db", "staging");
        let prod_db = secret("prod", "db", "prod");

        let allowed = decide(&engine, &alice(), Action::Read, &staging_db, &c);
        let expected = Decision {
            allowed: true,
            policies: vec!["devs-staging".into()],
            errors: vec![],
        };
        assert_eq!(allowed, expected);

        let denied = decide(&engine, &alice(), Action::Read, &prod_db, &c);
        assert!(!denied.allowed);
        assert!(denied.policies.is_empty());

        let outsider = Principal {
            groups: vec!["ops".into()],
            ..alice()
        };
        let outsider_read = decide(&engine, &outsider, Action::Read, &staging_db, &c);
        assert!(!outsider_read.allowed);

        // Other actions are not covered.
        let write = decide(&engine, &alice(), Action::Write, &staging_db, &c);
        assert!(!write.allowed);
    }

    #[test]
    fn duplicate_groups_are_tolerated() {
        let engine = PolicyEngine::new([(
            "devs",
            r#"permit(principal in Group::"devs", action, resource);"#,
        )])
        .unwrap();
        let p = Principal {
            groups: vec!["devs".into(), "devs".into()],
            ..alice()
        };
        let d = decide(
            &engine,
            &p,
            Action::List,
            &Resource::System,
            &ctx("user", false),
        );
        assert!(d.allowed, "{d:?}");
    }

    #[test]
    fn vault_tags_and_forbid_on_token_kind() {
        let engine = PolicyEngine::new([
            (
                "staging-env",
                r#"permit(principal, action == Action::"read", resource)
                   when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "staging" };"#,
            ),
            (
                "no-service",
                r#"forbid(principal, action, resource) when { context.token_kind == "service" };"#,
            ),
        ])
        .unwrap();
        let staging = secret("apps", "db", "staging");
        let prod = secret("apps", "db", "prod");
        let d = decide(
            &engine,
            &alice(),
            Action::Read,
            &staging,
            &ctx("user", false),
        );
        assert_eq!(d.policies, vec!["staging-env".to_owned()]);
        assert!(d.allowed);
        assert!(!decide(&engine, &alice(), Action::Read, &prod, &ctx("user", false)).allowed);

        let d = decide(
            &engine,
            &alice(),
            Action::Read,
            &staging,
            &ctx("service", false),
        );
        assert_eq!(
            d,
            Decision {
                allowed: false,
                policies: vec!["no-service".into()],
                errors: vec![]
            }
        );
    }

    #[test]
    fn secret_and_vault_own_tags() {
        let engine = PolicyEngine::new([(
            "tags",
            r#"permit(principal, action == Action::"write", resource)
               when { resource.hasTag("team") && resource.getTag("team") == "web" };"#,
        )])
        .unwrap();
        let c = ctx("user", false);
        let vault = Resource::Vault {
            name: "web".into(),
            tags: BTreeMap::from([("team".to_owned(), "web".to_owned())]),
        };
        assert!(decide(&engine, &alice(), Action::Write, &vault, &c).allowed);
        let tagged_secret = Resource::Secret {
            vault: "other".into(),
            vault_tags: BTreeMap::new(),
            name: "key".into(),
            tags: BTreeMap::from([("team".to_owned(), "web".to_owned())]),
        };
        assert!(decide(&engine, &alice(), Action::Write, &tagged_secret, &c).allowed);
        let untagged = Resource::Vault {
            name: "web".into(),
            tags: BTreeMap::new(),
        };
        assert!(!decide(&engine, &alice(), Action::Write, &untagged, &c).allowed);
    }

    #[test]
    fn default_deny_and_root() {
        let engine = PolicyEngine::new([]).unwrap();
        assert_eq!(engine.policy_count(), 1);
        let c = ctx("user", false);
        let d = decide(&engine, &alice(), Action::List, &Resource::System, &c);
        assert_eq!(
            d,
            Decision {
                allowed: false,
                policies: vec![],
                errors: vec![]
            }
        );
        let root = Principal {
            kind: PrincipalKind::User,
            name: ROOT_USER.into(),
            groups: vec![],
        };
        for action in Action::ALL {
            for resource in [
                Resource::System,
                Resource::Vault {
                    name: "prod".into(),
                    tags: BTreeMap::new(),
                },
                secret("prod", "db", "prod"),
            ] {
                let d = decide(&engine, &root, action, &resource, &ctx("root", false));
                assert!(d.allowed, "{action:?} {resource:?}");
                assert_eq!(d.policies, vec![ROOT_POLICY_ID.to_owned()]);
            }
        }
        // Only the `User` kind is root.
        let not_root = Principal {
            kind: PrincipalKind::Workload,
            ..root
        };
        assert!(!decide(&engine, &not_root, Action::Admin, &Resource::System, &c).allowed);
    }

    #[test]
    fn context_grant() {
        let engine = PolicyEngine::new([(
            "jit",
            r#"permit(principal, action == Action::"read", resource) when { context.grant };"#,
        )])
        .unwrap();
        let s = secret("prod", "db", "prod");
        assert!(decide(&engine, &alice(), Action::Read, &s, &ctx("user", true)).allowed);
        assert!(!decide(&engine, &alice(), Action::Read, &s, &ctx("user", false)).allowed);
    }

    #[test]
    fn context_now_and_mfa() {
        let engine = PolicyEngine::new([(
            "window",
            r#"permit(principal, action == Action::"admin", resource == System::"latchkey")
               when { context.mfa && context.now < 1800000000 };"#,
        )])
        .unwrap();
        let mut c = ctx("user", false);
        assert!(!decide(&engine, &alice(), Action::Admin, &Resource::System, &c).allowed);
        c.mfa = true;
        assert!(decide(&engine, &alice(), Action::Admin, &Resource::System, &c).allowed);
        c.now = 1_800_000_000;
        assert!(!decide(&engine, &alice(), Action::Admin, &Resource::System, &c).allowed);
    }

    #[test]
    fn evaluation_error_is_reported_not_fatal() {
        // `getTag` without `hasTag` passes validation only when guarded, so
        // provoke a runtime error with integer overflow instead.
        let engine = PolicyEngine::new([
            (
                "overflow",
                r#"permit(principal, action, resource) when { context.now + 9223372036854775807 > 0 };"#,
            ),
            (
                "fine",
                r#"permit(principal, action == Action::"list", resource);"#,
            ),
        ])
        .unwrap();
        let d = decide(
            &engine,
            &alice(),
            Action::List,
            &Resource::System,
            &ctx("user", false),
        );
        assert!(d.allowed);
        assert_eq!(d.policies, vec!["fine".to_owned()]);
        assert_eq!(d.errors.len(), 1, "{d:?}");
        assert!(d.errors[0].contains("`overflow`"), "{}", d.errors[0]);
    }

    #[test]
    fn secret_parent_and_attributes() {
        let engine = PolicyEngine::new([(
            "attrs",
            r#"permit(principal == ServiceAccount::"ci", action == Action::"read", resource == Secret::"prod/db")
               when { resource.name == "db" && resource.vault == Vault::"prod" && resource.vault.name == "prod" && principal.name == "ci" };"#,
        )])
        .unwrap();
        let ci = Principal {
            kind: PrincipalKind::ServiceAccount,
            name: "ci".into(),
            groups: vec![],
        };
        let c = ctx("service", false);
        assert!(
            decide(
                &engine,
                &ci,
                Action::Read,
                &secret("prod", "db", "prod"),
                &c
            )
            .allowed
        );
        assert!(
            !decide(
                &engine,
                &ci,
                Action::Read,
                &secret("prod", "db2", "prod"),
                &c
            )
            .allowed
        );
    }

    #[test]
    fn syntax_error_position() {
        let text = "permit(principal, action, resource)\nwhen {\n  context.mfa && };";
        let err = validate_policy("broken", text).unwrap_err();
        let shown = err.to_string();
        let d = diagnostics(err);
        assert_eq!(
            d[0].position,
            Some(Position {
                line: 3,
                column: 18
            }),
            "{shown}"
        );
        assert!(
            shown.starts_with("policy `broken` is invalid: line 3, column 18: "),
            "{shown}"
        );

        // Cedar labels the whole malformed scope clause.
        let text = "permit(\n  principal,\n  action = Action::\"read\",\n  resource\n);";
        let err = validate_policy("broken", text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("policy `broken` is invalid: line 3, column 3: "),
            "{shown}"
        );
    }

    #[test]
    fn unknown_entity_type_is_rejected() {
        let text =
            "permit(\n  principal,\n  action,\n  resource\n) when { principal == Usr::\"alice\" };";
        let err = validate_policy("typo", text).unwrap_err();
        let shown = err.to_string();
        let d = diagnostics(err);
        assert_eq!(d.len(), 1, "{shown}");
        assert_eq!(
            d[0].position,
            Some(Position {
                line: 5,
                column: 23
            }),
            "{shown}"
        );
        assert!(
            d[0].message.contains("unrecognized entity type `Usr`"),
            "{shown}"
        );
        assert!(
            shown.starts_with(
                "policy `typo` is invalid: line 5, column 23: unrecognized entity type `Usr`"
            ),
            "{shown}"
        );
    }

    #[test]
    fn unknown_action_is_rejected() {
        let text = "permit(principal, action == Action::\"raed\", resource);";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(
            d[0].position,
            Some(Position {
                line: 1,
                column: 29
            }),
            "{d:?}"
        );
        assert!(d[0].message.contains("raed"), "{d:?}");
    }

    #[test]
    fn attribute_typo_is_rejected() {
        let text = "permit(principal, action == Action::\"read\", resource)\nwhen { resource.nmae == \"db\" };";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(d[0].position.map(|p| p.line), Some(2), "{d:?}");
        assert_eq!(
            d[0].position,
            Some(Position { line: 2, column: 8 }),
            "{d:?}"
        );
        assert_eq!(
            d[0].message,
            "attribute `nmae` on entity type `Secret` not found"
        );
        assert_eq!(d[0].help.as_deref(), Some("did you mean `name`?"));
    }

    #[test]
    fn inapplicable_action_is_rejected() {
        let text = "permit(principal, action == Action::\"read\", resource == Vault::\"prod\");";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].position,
            Some(Position { line: 1, column: 1 }),
            "{d:?}"
        );
        assert_eq!(
            d[0].message,
            "unable to find an applicable action given the policy scope constraints"
        );
        assert_eq!(
            d[0].help.as_deref(),
            Some("try replacing `==` with `in` in the resource clause")
        );

        let text = "permit(principal, action == Action::\"admin\", resource is Secret);";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].help.as_deref(), Some(ACTION_HELP), "{d:?}");
    }

    #[test]
    fn impossible_condition_is_rejected() {
        let text = "permit(principal, action, resource) when { false };";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].message.starts_with("policy is impossible"), "{d:?}");
    }

    #[test]
    fn unknown_system_id_is_rejected() {
        let text = "permit(principal, action == Action::\"admin\", resource == System::\"other\");";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].position,
            Some(Position {
                line: 1,
                column: 58
            }),
            "{d:?}"
        );
        assert!(
            d[0].message
                .starts_with("entity `System::\"other\"` is of an enumerated entity type"),
            "{d:?}"
        );
    }

    #[test]
    fn type_error_is_rejected() {
        let text = "permit(principal, action, resource) when { context.now == \"soon\" };";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].position,
            Some(Position {
                line: 1,
                column: 44
            }),
            "{d:?}"
        );
        assert_eq!(d[0].message, "the types Long and String are not compatible");
        assert!(
            d[0].help
                .as_deref()
                .is_some_and(|h| h.starts_with("both operands")),
            "{d:?}"
        );
    }

    #[test]
    fn unguarded_tag_access_is_rejected() {
        let text = "permit(principal, action == Action::\"read\", resource)\nwhen { resource.vault.getTag(\"env\") == \"prod\" };";
        let d = diagnostics(validate_policy("a", text).unwrap_err());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].position,
            Some(Position { line: 2, column: 8 }),
            "{d:?}"
        );
        assert!(d[0].message.contains("tag `\"env\"`"), "{d:?}");
    }

    #[test]
    fn policy_prefix_is_stripped() {
        assert_eq!(strip_policy_prefix("for policy `a#1`, x"), "x");
        assert_eq!(strip_policy_prefix("for policy `a`: y"), "y");
        assert_eq!(strip_policy_prefix("for policy `a` z"), "for policy `a` z");
        assert_eq!(strip_policy_prefix("plain"), "plain");
    }

    #[test]
    fn several_diagnostics_one_per_line() {
        let text = "permit(principal == Usr::\"a\", action, resource);\nforbid(principal, action == Action::\"nope\", resource);";
        let err = validate_policy("two", text).unwrap_err();
        let shown = err.to_string();
        let d = diagnostics(err);
        assert_eq!(
            shown,
            "policy `two` is invalid: line 1, column 21: unrecognized entity type `Usr`; did you mean `User`?\n\
             line 2, column 29: unrecognized action `Action::\"nope\"`; did you mean `Action::\"read\"`?"
        );
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn empty_text_is_invalid() {
        for text in ["", "  \n", "// only a comment\n"] {
            let err = validate_policy("empty", text).unwrap_err();
            assert_eq!(
                err.to_string(),
                "policy `empty` is invalid: the text contains no policy statements; write at least one `permit(...);` or `forbid(...);` statement"
            );
        }
    }

    #[test]
    fn templates_are_rejected() {
        let text = "permit(principal, action, resource);\n  permit(principal == ?principal, action, resource);";
        let d = diagnostics(validate_policy("t", text).unwrap_err());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].position, Some(Position { line: 2, column: 3 }));
        assert_eq!(
            d[0].message,
            "the statement is a template (it uses `?principal` or `?resource`)"
        );
    }

    fn nested_parens(depth: usize) -> String {
        format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            "(".repeat(depth),
            ")".repeat(depth)
        )
    }

    #[test]
    fn deep_nesting_rejected_before_parsing() {
        // Score: `{` counts 4 and each paren 4 (the scope's parens are closed).
        let limit_parens = (MAX_NESTING - BRACKET_WEIGHT) / BRACKET_WEIGHT;
        assert_eq!(validate_policy("deep", &nested_parens(limit_parens)), Ok(1));
        let d = diagnostics(validate_policy("deep", &nested_parens(limit_parens + 1)).unwrap_err());
        assert_eq!(d.len(), 1);
        let column = "permit(principal, action, resource) when { ".len() + limit_parens + 1;
        assert_eq!(d[0].position, Some(Position { line: 1, column }));
        assert!(
            d[0].message.starts_with("the text nests too deeply here"),
            "{d:?}"
        );

        // A long `&&` chain counts one per operator.
        let chain = |n: usize| {
            format!(
                "permit(principal, action, resource) when {{ context.mfa{} }};",
                " && context.mfa".repeat(n)
            )
        };
        assert_eq!(validate_policy("chain", &chain(100)), Ok(1));
        let err = validate_policy("chain", &chain(200)).unwrap_err();
        assert!(err.to_string().contains("nests too deeply"), "{err}");

        // Far beyond the limit, the text is rejected without a stack overflow.
        let err = validate_policy("deep", &nested_parens(100_000)).unwrap_err();
        assert!(err.to_string().contains("nests too deeply"), "{err}");
    }

    #[test]
    fn nesting_score_resets_and_skips() {
        // Commas end an element; brackets in strings and comments do not count.
        let many = vec!["context.mfa && context.grant"; 200].join(", ");
        let text = format!(
            "// {open}\npermit(principal, action, resource) when {{ [{many}].contains(true) && \"{open}\" == \"\\\"{open}\" }};",
            open = "(".repeat(500)
        );
        assert_eq!(check_nesting(&text), Ok(()));
    }

    #[test]
    fn checking_works_on_small_caller_stacks() {
        let limit_parens = (MAX_NESTING - BRACKET_WEIGHT) / BRACKET_WEIGHT;
        let text = nested_parens(limit_parens);
        let result = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || {
                (
                    validate_policy("deep", &text),
                    PolicyEngine::new([("deep", text.as_str())]).map(|e| e.policy_count()),
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(result, (Ok(1), Ok(2)));
    }

    #[test]
    fn statement_ids() {
        let text = r#"
permit(principal == User::"a", action == Action::"list", resource);
@id("ops")
permit(principal == User::"b", action == Action::"list", resource);
permit(principal == User::"c", action == Action::"list", resource);
"#;
        assert_eq!(validate_policy("multi", text), Ok(3));
        let engine = PolicyEngine::new([("multi", text)]).unwrap();
        assert_eq!(engine.policy_count(), 4);
        let c = ctx("user", false);
        for (user, id) in [("a", "multi#1"), ("b", "multi#ops"), ("c", "multi#3")] {
            let p = Principal {
                kind: PrincipalKind::User,
                name: user.into(),
                groups: vec![],
            };
            let d = decide(&engine, &p, Action::List, &Resource::System, &c);
            assert_eq!(d.policies, vec![id.to_owned()]);
        }
    }

    #[test]
    fn single_statement_with_id_annotation() {
        let text = r#"@id("everyone") permit(principal, action == Action::"list", resource);"#;
        let engine = PolicyEngine::new([("one", text)]).unwrap();
        let d = decide(
            &engine,
            &alice(),
            Action::List,
            &Resource::System,
            &ctx("user", false),
        );
        assert_eq!(d.policies, vec!["one#everyone".to_owned()]);
    }

    #[test]
    fn bad_and_duplicate_id_annotations() {
        let text = "permit(principal, action, resource);\n@id(\"1\")\npermit(principal, action, resource);";
        let d = diagnostics(validate_policy("p", text).unwrap_err());
        assert_eq!(
            d[0].position,
            Some(Position { line: 2, column: 1 }),
            "{d:?}"
        );
        assert!(
            d[0].message.contains("does not start with an ASCII letter"),
            "{d:?}"
        );

        let text = "@id(\"x\") permit(principal, action, resource);\n  @id(\"x\") permit(principal, action, resource);";
        let d = diagnostics(validate_policy("p", text).unwrap_err());
        assert_eq!(
            d[0].position,
            Some(Position { line: 2, column: 3 }),
            "{d:?}"
        );
        assert_eq!(
            d[0].message,
            "statement id `p#x` is used twice in this policy"
        );
    }

    #[test]
    fn policy_name_rules() {
        assert_eq!(validate_name("prod-readers.v2_1"), Ok(()));
        assert_eq!(validate_name(&"a".repeat(64)), Ok(()));

        let outside = "the name contains a character outside a-z, 0-9, `_`, `.`, `-`";
        let reserved = "names starting with `builtin` are reserved";
        let long = "a".repeat(65);
        let cases = [
            ("", "the name is empty"),
            (long.as_str(), "the name is longer than 64 characters"),
            ("-x", "the name must start with a-z or 0-9"),
            ("Prod", "the name must start with a-z or 0-9"),
            ("a b", outside),
            ("a:b", outside),
            ("builtin", reserved),
            ("builtins-x", reserved),
        ];
        for (name, expected) in cases {
            match validate_name(name) {
                Err(PolicyError::InvalidName { reason, .. }) => assert_eq!(reason, expected),
                other => panic!("{name}: {other:?}"),
            }
        }

        let err = validate_policy("Bad", "permit(principal, action, resource);").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid policy name `Bad`: the name must start with a-z or 0-9; use 1 to 64 characters from a-z, 0-9, `_`, `.`, `-`, starting with a-z or 0-9 and not with `builtin`"
        );
    }

    #[test]
    fn rebuild_reuses_unchanged_policies_and_checks_the_rest() {
        let read = r#"permit(principal in Group::"devs", action == Action::"read", resource);"#;
        let list = r#"permit(principal in Group::"devs", action == Action::"list", resource);"#;
        let engine = PolicyEngine::new([("a", read), ("b", read)]).unwrap();
        let devs = Principal {
            groups: vec!["devs".into()],
            ..alice()
        };
        let c = ctx("user", false);
        let s = secret("v", "db", "dev");

        let changed = engine.rebuild([("a", read), ("b", list)]).unwrap();
        assert_eq!(changed.policy_count(), 3);
        assert_eq!(
            decide(&changed, &devs, Action::Read, &s, &c).policies,
            vec!["a".to_owned()]
        );
        assert_eq!(
            decide(&changed, &devs, Action::List, &s, &c).policies,
            vec!["b".to_owned()]
        );
        // The same text under another name gets that name's ids.
        let renamed = changed.rebuild([("c", read)]).unwrap();
        assert_eq!(
            decide(&renamed, &devs, Action::Read, &s, &c).policies,
            vec!["c".to_owned()]
        );
        // New text is checked; duplicates are refused as by `new`.
        let bad = "permit(principal, action, resource) when { resource.nmae };";
        assert!(matches!(
            renamed.rebuild([("c", read), ("d", bad)]),
            Err(PolicyError::Invalid { ref name, .. }) if name == "d"
        ));
        assert_eq!(
            renamed.rebuild([("c", read), ("c", read)]).unwrap_err(),
            PolicyError::DuplicateName { name: "c".into() }
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let p = "permit(principal, action, resource);";
        assert_eq!(
            PolicyEngine::new([("a", p), ("a", p)]).unwrap_err(),
            PolicyError::DuplicateName { name: "a".into() }
        );
    }

    #[test]
    fn engine_reports_first_invalid_policy() {
        let err = PolicyEngine::new([
            ("good", "permit(principal, action, resource);"),
            (
                "bad",
                "permit(principal, action, resource) when { resource.nmae };",
            ),
        ])
        .unwrap_err();
        assert!(
            matches!(err, PolicyError::Invalid { ref name, .. } if name == "bad"),
            "{err}"
        );
    }

    #[test]
    fn uid_strings() {
        assert_eq!(alice().uid_string(), r#"User::"alice""#);
        let odd = Principal {
            kind: PrincipalKind::ServiceAccount,
            name: "a\"b\\c".into(),
            groups: vec![],
        };
        assert_eq!(odd.uid_string(), r#"ServiceAccount::"a\"b\\c""#);
        assert_eq!(Resource::System.uid_string(), r#"System::"latchkey""#);
        let vault = Resource::Vault {
            name: "prod".into(),
            tags: BTreeMap::new(),
        };
        assert_eq!(vault.uid_string(), r#"Vault::"prod""#);
        assert_eq!(
            secret("prod", "db", "x").uid_string(),
            r#"Secret::"prod/db""#
        );
    }

    #[test]
    fn serde_spellings() {
        assert_eq!(
            serde_json::to_string(&PrincipalKind::ServiceAccount).unwrap(),
            "\"service_account\""
        );
        for kind in PrincipalKind::ALL {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
        for action in Action::ALL {
            assert_eq!(
                serde_json::to_string(&action).unwrap(),
                format!("\"{}\"", action.as_str())
            );
        }
    }

    #[test]
    fn reused_entities_follow_groups_and_tags() {
        let engine = PolicyEngine::new([(
            "dev-read",
            r#"permit(principal in Group::"devs", action == Action::"read", resource)
               when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "dev" };"#,
        )])
        .unwrap();
        let c = ctx("user", false);
        let mut alice = alice();
        alice.groups = vec!["devs".into()];
        let dev = secret("v", "db", "dev");
        let prod = secret("v", "db", "prod");
        for _ in 0..3 {
            assert!(decide(&engine, &alice, Action::Read, &dev, &c).allowed);
            assert!(!decide(&engine, &alice, Action::Read, &prod, &c).allowed);
        }
        // Same name, group removed: the entry of the old principal must not answer.
        let outsider = Principal {
            groups: vec![],
            ..alice.clone()
        };
        assert!(!decide(&engine, &outsider, Action::Read, &dev, &c).allowed);
        assert!(decide(&engine, &alice, Action::Read, &dev, &c).allowed);
        // A later second gets its own context, and the decision still holds.
        let later = RequestContext {
            now: c.now + 1,
            ..c.clone()
        };
        assert!(decide(&engine, &alice, Action::Read, &dev, &later).allowed);
    }

    #[test]
    fn entity_cache_keeps_pairs_in_use_and_bounds_the_rest() {
        let engine = PolicyEngine::new([]).unwrap();
        let prepared = std::cell::Cell::new(0);
        let get = |name: &str| {
            let resource = secret("v", name, "dev");
            engine
                .entities
                .get_or_prepare(&alice(), &resource, || {
                    prepared.set(prepared.get() + 1);
                    engine.prepare(&alice(), &resource)
                })
                .unwrap()
        };
        let hot = get("hot");
        for n in 0..3 * ENTITY_CACHE_GENERATION {
            get(&format!("s{n}"));
            if n % 100 == 0 {
                assert!(
                    Arc::ptr_eq(&hot, &get("hot")),
                    "the pair in use was dropped"
                );
            }
        }
        assert_eq!(prepared.get(), 1 + 3 * ENTITY_CACHE_GENERATION);
        let generations = engine.entities.lock();
        assert!(generations.current.len() <= ENTITY_CACHE_GENERATION);
        assert!(generations.previous.len() <= ENTITY_CACHE_GENERATION);
        drop(generations);
        // An entry from an old generation is built again.
        get("s0");
        assert_eq!(prepared.get(), 2 + 3 * ENTITY_CACHE_GENERATION);
    }

    #[test]
    fn engine_is_shareable() {
        fn check<T: Send + Sync>() {}
        check::<PolicyEngine>();
    }

    #[test]
    fn position_counts_characters() {
        assert_eq!(position_at("ab\ncdé f", 8), Position { line: 2, column: 5 });
        assert_eq!(position_at("é", 1), Position { line: 1, column: 1 });
        assert_eq!(position_at("a", 99), Position { line: 1, column: 2 });
    }

    /// Statements with every kind of action and resource scope, to check
    /// that bucketing never drops a statement that applies.
    const SCOPES: &[(&str, &str)] = &[
        (
            "any",
            r#"permit(principal == User::"u0", action, resource);"#,
        ),
        (
            "read-vault",
            r#"permit(principal in Group::"g0", action == Action::"read", resource in Vault::"v0");"#,
        ),
        (
            "read-other-vault",
            r#"permit(principal in Group::"g0", action == Action::"read", resource in Vault::"v1") when { context.mfa };"#,
        ),
        (
            "multi-action",
            r#"permit(principal, action in [Action::"list", Action::"write"], resource in Vault::"v1");"#,
        ),
        (
            "vault-eq",
            r#"permit(principal, action, resource == Vault::"v0") when { context.mfa };"#,
        ),
        (
            "secret-eq",
            r#"permit(principal, action, resource == Secret::"v1/s0");"#,
        ),
        (
            "is-secret",
            r#"forbid(principal, action, resource is Secret) when { context.token_kind == "service" };"#,
        ),
        (
            "is-in",
            r#"permit(principal is Agent, action, resource is Secret in Vault::"v0") when { context.grant };"#,
        ),
        (
            "system",
            r#"permit(principal in Group::"g1", action == Action::"admin", resource == System::"latchkey");"#,
        ),
        (
            "tags",
            r#"forbid(principal, action == Action::"delete", resource) when { resource has name && resource.name == "s1" };"#,
        ),
        (
            "env",
            r#"permit(principal, action, resource is Secret) when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "dev" };"#,
        ),
        (
            "vault-tag",
            r#"permit(principal, action == Action::"list", resource is Vault) when { resource.hasTag("env") };"#,
        ),
        (
            "self",
            r#"permit(principal in User::"u1", action == Action::"list", resource);"#,
        ),
        (
            "user-in-group",
            r#"forbid(principal is User in Group::"g2", action, resource in Vault::"v1");"#,
        ),
        (
            "g2-read",
            r#"permit(principal in Group::"g2", action, resource in Vault::"v1") unless { context.mfa };"#,
        ),
        (
            "secret-in",
            r#"permit(principal, action == Action::"read", resource in Secret::"v0/s1");"#,
        ),
        (
            "overflow",
            r#"permit(principal in Group::"g1", action, resource) when { context.now + 9223372036854775807 > 1 };"#,
        ),
        (
            "underflow",
            r#"forbid(principal, action, resource in Vault::"v0") when { context.now - 9223372036854775807 - 9223372036854775807 < 0 };"#,
        ),
    ];

    static SCOPES_ENGINE: LazyLock<PolicyEngine> =
        LazyLock::new(|| PolicyEngine::new(SCOPES.iter().copied()).unwrap());

    /// All of [`SCOPES`] in one set, without buckets.
    static SCOPES_SET: LazyLock<PolicySet> = LazyLock::new(|| {
        let mut all = PolicySet::new();
        all.add(core().unwrap().root_policy.clone()).unwrap();
        for (name, text) in SCOPES {
            for statement in compile(name, text).unwrap() {
                all.add(statement).unwrap();
            }
        }
        all
    });

    /// Decides over all of [`SCOPES`] at once, with entities and context
    /// built afresh rather than taken from the engine's caches.
    fn reference_decide(request: &AccessRequest<'_>) -> Decision {
        let engine = &*SCOPES_ENGINE;
        let prepared = engine.prepare(request.principal, request.resource).unwrap();
        let action = engine.core.actions[request.action.index()].clone();
        let cedar_request = Request::new(
            prepared.principal_uid.clone(),
            action,
            prepared.resource_uid.clone(),
            build_context(request.context).unwrap(),
            None,
        )
        .unwrap();
        let response =
            Authorizer::new().is_authorized(&cedar_request, &SCOPES_SET, &prepared.entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policies.sort_unstable();
        let mut errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        errors.sort_unstable();
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            policies,
            errors,
        }
    }

    fn arb_resource() -> impl Strategy<Value = Resource> {
        let name = prop::sample::select(vec!["v0", "v1", "s0", "s1"]);
        let env = prop::option::of(prop::sample::select(vec!["dev", "prod"]));
        let tags = |env: Option<&str>| {
            env.map(|e| BTreeMap::from([("env".to_owned(), e.to_owned())]))
                .unwrap_or_default()
        };
        prop_oneof![
            Just(Resource::System),
            (name.clone(), env.clone()).prop_map(move |(n, e)| Resource::Vault {
                name: n.into(),
                tags: tags(e),
            }),
            (name.clone(), name, env.clone(), env).prop_map(move |(v, n, ve, e)| {
                Resource::Secret {
                    vault: v.into(),
                    vault_tags: tags(ve),
                    name: n.into(),
                    tags: tags(e),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn buckets_agree_with_full_evaluation(
            kind in prop::sample::select(PrincipalKind::ALL.to_vec()),
            name in prop::sample::select(vec!["u0", "u1", "root"]),
            groups in prop::collection::vec(prop::sample::select(vec!["g0", "g1", "g2"]), 0..3),
            action in prop::sample::select(Action::ALL.to_vec()),
            resource in arb_resource(),
            token_kind in prop::sample::select(vec!["user", "service"]),
            grant in any::<bool>(),
            mfa in any::<bool>(),
        ) {
            let principal = Principal {
                kind,
                name: name.into(),
                groups: groups.into_iter().map(String::from).collect(),
            };
            let context = RequestContext { token_kind: token_kind.into(), now: 0, grant, mfa, duration: 0 };
            let request = AccessRequest { principal: &principal, action, resource: &resource, context: &context };
            prop_assert_eq!(SCOPES_ENGINE.decide(&request), reference_decide(&request));
        }

        #[test]
        fn validate_policy_never_panics(text in any::<String>()) {
            let _ = validate_policy("fuzz", &text);
        }

        #[test]
        fn policy_like_text_never_panics(
            text in r#"(@id\("[a-z1]{0,3}"\) )?(permit|forbid)\((principal|action|resource|==|in|,| |User|::|"[a-z]{0,3}"|\?principal){0,12}\)( when \{ [a-z.()"=& ]{0,20} \})?;?"#
        ) {
            let _ = validate_policy("fuzz", &text);
        }

        #[test]
        fn uid_string_parses_back(name in any::<String>()) {
            let p = Principal { kind: PrincipalKind::Agent, name: name.clone(), groups: vec![] };
            let uid = EntityUid::from_str(&p.uid_string()).unwrap();
            prop_assert_eq!(uid.id().unescaped(), name.as_str());
            prop_assert_eq!(uid.to_string(), p.uid_string());
        }
    }
}
