//! Typed node inputs and node functions, and their type-erased compiled form.
//!
//! A node declares its inputs as a tuple of [`Source`] (a cache source, seen as `Option<&T>`)
//! and [`Upstream`] (another node's output, seen as `&T`) specs, in the order of its function's
//! parameters. The specs carry the types, so [`crate::GraphBuilder::build`] can check that every
//! edge joins equal types, and a firing fetches each argument from a pre-resolved location.

use std::any::{Any, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::boundary::{Boundary, BoundaryValue};
use crate::cache::InputCache;
use crate::codec::{self, CodecError};
use crate::source::SourceName;

/// Erased value held in a node slot or a terminal output.
pub type AnyValue = dyn Any + Send + Sync;

/// Encodes an erased value of a known type with [`crate::codec`].
pub type EncodeFn = fn(&AnyValue) -> Result<Vec<u8>, CodecError>;
/// Decodes bytes into an erased value of a known type.
pub type DecodeFn = fn(&[u8]) -> Result<BoundaryValue, CodecError>;
/// Renders an erased value of a known type as JSON (for workflow contexts and tools).
pub type ToJsonFn = fn(&AnyValue) -> Result<serde_json::Value, String>;
/// Reads an erased value of a known type from JSON.
pub type FromJsonFn = fn(&serde_json::Value) -> Result<BoundaryValue, String>;

/// How a node's output is encoded: the engine codec, and JSON.
#[derive(Debug, Clone, Copy)]
pub struct OutputCodec {
    /// Engine codec (bincode with a version byte).
    pub encode: EncodeFn,
    /// JSON.
    pub to_json: ToJsonFn,
}

pub(crate) fn output_codec<T: Serialize + 'static>() -> OutputCodec {
    OutputCodec {
        encode: encode_any::<T>,
        to_json: to_json_any::<T>,
    }
}

fn to_json_any<T: Serialize + 'static>(value: &AnyValue) -> Result<serde_json::Value, String> {
    let v = value
        .downcast_ref::<T>()
        .ok_or_else(|| format!("value is not a {}", std::any::type_name::<T>()))?;
    serde_json::to_value(v).map_err(|e| e.to_string())
}

fn from_json_any<T: DeserializeOwned + Send + Sync + 'static>(
    value: &serde_json::Value,
) -> Result<BoundaryValue, String> {
    T::deserialize(value)
        .map(|v| Arc::new(v) as BoundaryValue)
        .map_err(|e| format!("not a {}: {e}", std::any::type_name::<T>()))
}
pub(crate) type ExtractFn = Arc<dyn for<'v> Fn(&'v AnyValue) -> Option<&'v AnyValue> + Send + Sync>;

pub(crate) fn encode_any<T: Serialize + 'static>(value: &AnyValue) -> Result<Vec<u8>, CodecError> {
    match value.downcast_ref::<T>() {
        Some(v) => codec::encode(v),
        None => Err(CodecError::Encode {
            type_name: std::any::type_name::<T>(),
            message: "value is of another type".into(),
        }),
    }
}

fn decode_any<T: DeserializeOwned + Send + Sync + 'static>(
    bytes: &[u8],
) -> Result<BoundaryValue, CodecError> {
    Ok(Arc::new(codec::decode::<T>(bytes)?))
}

/// Whether an input reads the cache or another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A cache source, passed as `Option<&T>`.
    Source,
    /// Another node's output, passed as `&T`.
    Upstream,
}

/// How to encode and decode a source's values (for ledgers and process boundaries).
#[derive(Debug, Clone, Copy)]
pub struct SourceCodec {
    /// Encodes a value of the source's type.
    pub encode: EncodeFn,
    /// Decodes a value of the source's type.
    pub decode: DecodeFn,
    /// Reads a value of the source's type from JSON.
    pub from_json: FromJsonFn,
}

/// A declared input: name, kind and type.
#[derive(Debug, Clone)]
pub struct InputDecl {
    /// Source name or upstream node name.
    pub name: String,
    /// Source or upstream.
    pub kind: InputKind,
    /// Type of the value.
    pub type_id: TypeId,
    /// Rust name of the type, for messages.
    pub type_name: &'static str,
    /// Codec of a source's values.
    pub codec: Option<SourceCodec>,
}

/// Why a node did not produce its output.
#[derive(Debug, Clone)]
pub(crate) enum NodeFailure {
    Panicked(String),
    InputType {
        source: SourceName,
        expected: &'static str,
        found: &'static str,
    },
    Internal(String),
}

/// Where a compiled node finds one argument. Opaque; built by the graph compiler.
pub struct InputLoc(pub(crate) Loc);

pub(crate) enum Loc {
    Source(usize),
    Node(usize),
    Routed { slot: usize, extract: ExtractFn },
}

/// What a firing reads from: the cache snapshot and the node slots. Opaque.
pub struct FireCtx<'a> {
    pub(crate) cache: &'a InputCache,
    pub(crate) aligned: bool,
    pub(crate) source_names: &'a [SourceName],
    pub(crate) slots: &'a [Box<dyn ErasedSlot>],
}

impl<'a> FireCtx<'a> {
    fn source(&self, index: usize) -> Option<&'a Boundary> {
        if self.aligned {
            self.cache.at(index)
        } else {
            let name = self.source_names.get(index)?;
            self.cache.boundary(name.as_str())
        }
    }

    /// The value in slot `index`; `None` if that node did not run in this firing.
    fn slot(&self, index: usize) -> Result<Option<&'a AnyValue>, FetchError> {
        match self.slots.get(index) {
            Some(slot) => Ok(slot.get_any()),
            None => Err(FetchError(NodeFailure::Internal(format!(
                "no slot {index}"
            )))),
        }
    }

    fn store<O: Send + Sync + 'static>(&self, index: usize, out: O) -> Result<(), NodeFailure> {
        let cell = self
            .slots
            .get(index)
            .and_then(|s| s.as_any().downcast_ref::<OnceLock<O>>())
            .ok_or_else(|| NodeFailure::Internal(format!("slot {index} has another type")))?;
        cell.set(out)
            .map_err(|_| NodeFailure::Internal(format!("slot {index} written twice")))
    }
}

/// Result of fetching arguments: `Ok(None)` means an upstream did not run (untaken branch), so
/// the node is skipped.
pub type Fetch<T> = Result<Option<T>, FetchError>;

/// An argument could not be fetched. Opaque.
pub struct FetchError(pub(crate) NodeFailure);

/// One typed input spec.
pub trait Input: Send + Sync + 'static {
    /// The type of value the input reads.
    type Value: Send + Sync + 'static;
    /// What the node function receives.
    type Ref<'a>: Send + Sync;
    /// Describes the input for validation.
    fn decl(&self) -> InputDecl;
    /// Fetches the argument for one firing.
    fn fetch<'a>(loc: &InputLoc, ctx: &FireCtx<'a>) -> Fetch<Self::Ref<'a>>;
}

/// A cache input: the node receives `Option<&T>` (`None` when the source never had a value).
pub struct Source<T> {
    name: SourceName,
    _t: PhantomData<fn() -> T>,
}

/// Declares a cache input named `name` holding `T`.
pub fn source<T>(name: impl Into<SourceName>) -> Source<T> {
    Source {
        name: name.into(),
        _t: PhantomData,
    }
}

/// An upstream input: the node receives `&T`, the output of node `name` (or the payload of the
/// route that node `name` took to this node).
pub struct Upstream<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

/// Declares an input reading the output of node `name`, of type `T`.
pub fn upstream<T>(name: impl Into<String>) -> Upstream<T> {
    Upstream {
        name: name.into(),
        _t: PhantomData,
    }
}

impl<T> Input for Source<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Value = T;
    type Ref<'a> = Option<&'a T>;

    fn decl(&self) -> InputDecl {
        InputDecl {
            name: self.name.as_str().to_owned(),
            kind: InputKind::Source,
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            codec: Some(SourceCodec {
                encode: encode_any::<T>,
                decode: decode_any::<T>,
                from_json: from_json_any::<T>,
            }),
        }
    }

    fn fetch<'a>(loc: &InputLoc, ctx: &FireCtx<'a>) -> Fetch<Option<&'a T>> {
        let Loc::Source(index) = loc.0 else {
            return Err(FetchError(NodeFailure::Internal(
                "source input bound to a node".into(),
            )));
        };
        match ctx.source(index) {
            None => Ok(Some(None)),
            Some(boundary) => match boundary.get::<T>() {
                Some(v) => Ok(Some(Some(v))),
                None => Err(FetchError(NodeFailure::InputType {
                    source: ctx
                        .source_names
                        .get(index)
                        .cloned()
                        .unwrap_or_else(|| "?".into()),
                    expected: std::any::type_name::<T>(),
                    found: boundary.type_name(),
                })),
            },
        }
    }
}

impl<T: Send + Sync + 'static> Input for Upstream<T> {
    type Value = T;
    type Ref<'a> = &'a T;

    fn decl(&self) -> InputDecl {
        InputDecl {
            name: self.name.clone(),
            kind: InputKind::Upstream,
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            codec: None,
        }
    }

    fn fetch<'a>(loc: &InputLoc, ctx: &FireCtx<'a>) -> Fetch<&'a T> {
        let value = match &loc.0 {
            Loc::Node(slot) => match ctx.slot(*slot)? {
                Some(v) => v,
                None => return Ok(None),
            },
            Loc::Routed { slot, extract } => {
                let Some(whole) = ctx.slot(*slot)? else {
                    return Ok(None);
                };
                match extract(whole) {
                    Some(v) => v,
                    None => return Ok(None),
                }
            }
            Loc::Source(_) => {
                return Err(FetchError(NodeFailure::Internal(
                    "upstream input bound to a source".into(),
                )))
            }
        };
        value.downcast_ref::<T>().map(Some).ok_or_else(|| {
            FetchError(NodeFailure::Internal(format!(
                "upstream value is not a {}",
                std::any::type_name::<T>()
            )))
        })
    }
}

/// A tuple of input specs, one per parameter of the node function.
pub trait Inputs: Send + Sync + 'static {
    /// The tuple of arguments the node function receives.
    type Refs<'a>: Send + Sync;
    /// Describes every input, in parameter order.
    fn decls(&self) -> Vec<InputDecl>;
    /// Fetches every argument for one firing.
    fn fetch<'a>(locs: &[InputLoc], ctx: &FireCtx<'a>) -> Fetch<Self::Refs<'a>>;
}

/// A plain (synchronous) node function taking the arguments described by `I`.
pub trait NodeFn<I: Inputs, O>: Send + Sync + 'static {
    /// Calls the function.
    fn call<'a>(&self, args: I::Refs<'a>) -> O;
}

/// An async node function taking the arguments described by `I`, whose future may borrow them.
pub trait AsyncNodeFn<'a, I: Inputs, O>: Send + Sync + 'static {
    /// The future returned by the function.
    type Fut: Future<Output = O> + Send + 'a;
    /// Calls the function.
    fn call(&self, args: I::Refs<'a>) -> Self::Fut;
}

macro_rules! tuple_inputs {
    ($($I:ident $i:tt),+) => {
        impl<$($I: Input),+> Inputs for ($($I,)+) {
            type Refs<'a> = ($($I::Ref<'a>,)+);

            fn decls(&self) -> Vec<InputDecl> {
                vec![$(self.$i.decl()),+]
            }

            fn fetch<'a>(locs: &[InputLoc], ctx: &FireCtx<'a>) -> Fetch<Self::Refs<'a>> {
                Ok(Some(($(
                    match locs.get($i) {
                        Some(loc) => match $I::fetch(loc, ctx)? {
                            Some(v) => v,
                            None => return Ok(None),
                        },
                        None => {
                            return Err(FetchError(NodeFailure::Internal(
                                "missing input location".into(),
                            )))
                        }
                    },
                )+)))
            }
        }

        impl<Func, O, $($I: Input),+> NodeFn<($($I,)+), O> for Func
        where
            Func: for<'a> Fn($($I::Ref<'a>),+) -> O + Send + Sync + 'static,
        {
            #[allow(non_snake_case)]
            fn call<'a>(&self, args: ($($I::Ref<'a>,)+)) -> O {
                let ($($I,)+) = args;
                self($($I),+)
            }
        }

        impl<'a, Func, Fut, O, $($I: Input),+> AsyncNodeFn<'a, ($($I,)+), O> for Func
        where
            Func: Fn($($I::Ref<'a>),+) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = O> + Send + 'a,
        {
            type Fut = Fut;

            #[allow(non_snake_case)]
            fn call(&self, args: ($($I::Ref<'a>,)+)) -> Fut {
                let ($($I,)+) = args;
                self($($I),+)
            }
        }
    };
}

tuple_inputs!(A 0);
tuple_inputs!(A 0, B 1);
tuple_inputs!(A 0, B 1, C 2);
tuple_inputs!(A 0, B 1, C 2, D 3);
tuple_inputs!(A 0, B 1, C 2, D 3, E 4);
tuple_inputs!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_inputs!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_inputs!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// A node's reusable output slot.
pub trait ErasedSlot: Send + Sync {
    /// The value, if the node ran in this firing.
    fn get_any(&self) -> Option<&AnyValue>;
    /// The slot itself, for typed access.
    fn as_any(&self) -> &dyn Any;
    /// Takes the value out as a box (terminal outputs).
    fn take_boxed(&mut self) -> Option<Box<AnyValue>>;
    /// Empties the slot for the next firing.
    fn clear(&mut self);
}

impl<T: Send + Sync + 'static> ErasedSlot for OnceLock<T> {
    fn get_any(&self) -> Option<&AnyValue> {
        self.get().map(|v| v as &AnyValue)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn take_boxed(&mut self) -> Option<Box<AnyValue>> {
        self.take().map(|v| Box::new(v) as Box<AnyValue>)
    }
    fn clear(&mut self) {
        self.take();
    }
}

pub(crate) fn new_slot<T: Send + Sync + 'static>() -> Box<dyn ErasedSlot> {
    Box::new(OnceLock::<T>::new())
}

pub(crate) type NodeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NodeFailure>> + Send + 'a>>;

pub(crate) enum NodeRun<'a> {
    Skipped,
    Done(Result<(), NodeFailure>),
    Pending(NodeFuture<'a>),
}

pub(crate) trait ErasedNode: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a FireCtx<'a>) -> NodeRun<'a>;
}

/// The message of a caught panic (its `&str` or `String` payload).
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

pub(crate) struct SyncNode<I, O, F> {
    pub(crate) f: F,
    pub(crate) locs: Box<[InputLoc]>,
    pub(crate) slot: usize,
    /// Run under `block_in_place` (CPU-heavy node) where the runtime allows it.
    pub(crate) blocking: bool,
    pub(crate) _p: PhantomData<fn(I) -> O>,
}

/// Runs `f` so that a CPU-heavy node does not stall other tasks: on a multi-thread tokio
/// runtime the worker hands its other tasks to the rest of the pool first
/// (`block_in_place`); elsewhere (current-thread runtime, no runtime) `f` runs inline.
fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl<I, O, F> ErasedNode for SyncNode<I, O, F>
where
    I: Inputs,
    O: Send + Sync + 'static,
    F: NodeFn<I, O>,
{
    fn run<'a>(&'a self, ctx: &'a FireCtx<'a>) -> NodeRun<'a> {
        // Fetching runs user code too (route extractors), so it is guarded with the call.
        let attempt = catch_unwind(AssertUnwindSafe(|| match I::fetch(&self.locs, ctx) {
            Ok(Some(args)) if self.blocking => Ok(Some(run_blocking(|| self.f.call(args)))),
            Ok(Some(args)) => Ok(Some(self.f.call(args))),
            Ok(None) => Ok(None),
            Err(FetchError(e)) => Err(e),
        }));
        match attempt {
            Ok(Ok(Some(out))) => NodeRun::Done(ctx.store(self.slot, out)),
            Ok(Ok(None)) => NodeRun::Skipped,
            Ok(Err(e)) => NodeRun::Done(Err(e)),
            Err(payload) => NodeRun::Done(Err(NodeFailure::Panicked(panic_message(payload)))),
        }
    }
}

pub(crate) struct AsyncNode<I, O, F> {
    pub(crate) f: F,
    pub(crate) locs: Box<[InputLoc]>,
    pub(crate) slot: usize,
    pub(crate) _p: PhantomData<fn(I) -> O>,
}

async fn catch_unwind_future<F: Future>(fut: F) -> Result<F::Output, NodeFailure> {
    use futures_util::FutureExt;
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| NodeFailure::Panicked(panic_message(payload)))
}

impl<I, O, F> ErasedNode for AsyncNode<I, O, F>
where
    I: Inputs,
    O: Send + Sync + 'static,
    F: for<'a> AsyncNodeFn<'a, I, O>,
{
    fn run<'a>(&'a self, ctx: &'a FireCtx<'a>) -> NodeRun<'a> {
        // Fetching runs user code too (route extractors), so it is guarded with the call.
        let attempt = catch_unwind(AssertUnwindSafe(|| match I::fetch(&self.locs, ctx) {
            Ok(Some(args)) => Ok(Some(self.f.call(args))),
            Ok(None) => Ok(None),
            Err(FetchError(e)) => Err(e),
        }));
        let fut = match attempt {
            Ok(Ok(Some(fut))) => fut,
            Ok(Ok(None)) => return NodeRun::Skipped,
            Ok(Err(e)) => return NodeRun::Done(Err(e)),
            Err(payload) => {
                return NodeRun::Done(Err(NodeFailure::Panicked(panic_message(payload))))
            }
        };
        let slot = self.slot;
        NodeRun::Pending(Box::pin(async move {
            let out = catch_unwind_future(fut).await?;
            ctx.store(slot, out)
        }))
    }
}

/// Runs `fut`, turning a panic in any of its polls into `Err(message)`.
pub async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, String> {
    catch_unwind_future(fut)
        .await
        .map_err(|failure| match failure {
            NodeFailure::Panicked(message) => message,
            other => format!("{other:?}"),
        })
}
