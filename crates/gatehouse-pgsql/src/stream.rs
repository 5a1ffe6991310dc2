//! Classifies one statement by walking its parse tree through serde, without building an
//! intermediate value.
//!
//! pg_query's protobuf types implement `Serialize`, so serializing a statement into [`Walker`]
//! visits every node of the tree: nothing can be skipped by omission. Every message, whether
//! it sits in a generic `Node` or in a typed field, arrives as `serialize_struct` with its
//! type's name, so nested statements, relations and function calls are all recognized by name.
//! Only the few scalar fields classification reads are kept, and only for the node types that
//! need them.

use gatehouse_core::classify::{Statement, StatementKind};
use pg_query::NodeEnum;
use serde::Serialize;
use serde::ser::{self, Impossible};

use crate::body::Body;
use crate::masking::{MaskFacts, RelationRef};
use crate::{Findings, statement_kind, unknown_statement, visit};

/// Node types whose scalar fields classification reads.
const CAPTURED: &[&str] = &[
    "RangeVar",
    "CommonTableExpr",
    "SelectStmt",
    "CopyStmt",
    "VariableSetStmt",
    "FuncCall",
    "PrepareStmt",
    "ExecuteStmt",
    "String",
];

pub(crate) fn classify_statement(node: &NodeEnum) -> Result<Statement, String> {
    walk_statement(node, None)
}

/// [`classify_statement`], also collecting into `facts` what the masking check needs, in the
/// same walk (see [`crate::masking`]).
pub(crate) fn classify_statement_for_masking(
    node: &NodeEnum,
    facts: &mut MaskFacts,
) -> Result<Statement, String> {
    walk_statement(node, Some(facts))
}

fn walk_statement(node: &NodeEnum, facts: Option<&mut MaskFacts>) -> Result<Statement, String> {
    let mut walker = Walker {
        stack: Vec::with_capacity(32),
        findings: Findings::new(StatementKind::Read),
        top: None,
        error: None,
        facts,
    };
    if node.serialize(&mut walker).is_err() || walker.error.is_some() {
        return Err(walker
            .error
            .unwrap_or_else(|| "the statement's parse tree cannot be read".into()));
    }
    let top = walker
        .top
        .ok_or_else(|| "a statement has an empty parse tree".to_string())?;
    // The statement itself must be of a known type; nested ones were checked on the way.
    statement_kind(top.name, &top)?.ok_or_else(|| unknown_statement(top.name))?;
    if let Some(facts) = walker.facts {
        facts.statement = top.name;
    }
    Ok(walker.findings.into_statement(top.name, &top))
}

enum Scalar {
    Str(String),
    Bool(bool),
    Int(i64),
}

/// One message being serialized.
struct Frame {
    name: &'static str,
    /// The field whose value is being serialized now.
    field: &'static str,
    /// The index of the element being serialized in the current list field.
    index: usize,
    capture: bool,
    scalars: Vec<(&'static str, Scalar)>,
    lists: Vec<&'static str>,
    /// FuncCall only: the name parts and the first argument if it is a string constant.
    funcname: Vec<String>,
    first_arg: Option<String>,
    /// RangeVar only, when collecting masking facts: its alias.
    alias: Option<String>,
    /// ColumnRef only, when collecting masking facts: its name parts (`None` for `*`).
    column: Vec<Option<String>>,
}

impl Body for Frame {
    fn str_field(&self, name: &str) -> Option<&str> {
        self.scalars.iter().find_map(|(k, v)| match v {
            Scalar::Str(s) if *k == name => Some(s.as_str()),
            _ => None,
        })
    }

    fn bool_field(&self, name: &str) -> Option<bool> {
        self.scalars.iter().find_map(|(k, v)| match v {
            Scalar::Bool(b) if *k == name => Some(*b),
            _ => None,
        })
    }

    fn int_field(&self, name: &str) -> Option<i64> {
        self.scalars.iter().find_map(|(k, v)| match v {
            Scalar::Int(i) if *k == name => Some(*i),
            _ => None,
        })
    }

    fn has_items(&self, name: &str) -> bool {
        self.lists.contains(&name)
    }
}

struct Walker<'a> {
    stack: Vec<Frame>,
    findings: Findings,
    /// The outermost message (the statement), once it has been walked.
    top: Option<Frame>,
    /// The first refusal met on the way.
    error: Option<String>,
    /// Where to collect what the masking check needs, when asked.
    facts: Option<&'a mut MaskFacts>,
}

#[derive(Debug)]
struct WalkError(String);

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl ser::Error for WalkError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

fn unexpected(what: &str) -> WalkError {
    WalkError(format!("unexpected {what} in the parse tree"))
}

impl Walker<'_> {
    fn scalar(&mut self, value: Scalar) {
        if let Some(top) = self.stack.last_mut()
            && top.capture
        {
            top.scalars.push((top.field, value));
        }
    }

    fn refuse(&mut self, reason: String) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
    }

    /// A message is complete: account for what it means.
    fn finish(&mut self, mut frame: Frame) {
        match statement_kind(frame.name, &frame) {
            Ok(Some(kind)) => self.findings.escalate(kind),
            Ok(None) => {}
            Err(reason) => self.refuse(reason),
        }
        if frame.name == "String" {
            self.route_string(&frame);
        }
        if self.facts.is_some() {
            self.collect_mask_fact(&mut frame);
        }
        let function =
            (frame.name == "FuncCall").then(|| (frame.funcname.join("."), frame.first_arg.clone()));
        if let Err(reason) = visit(frame.name, &frame, function.as_ref(), &mut self.findings) {
            self.refuse(reason);
        }
        if self.stack.is_empty() {
            self.top = Some(frame);
        }
    }

    /// What the masking check needs from a finished message: relations with their aliases,
    /// and every column reference with whether it is a plain entry of the statement's own
    /// SELECT list (`SelectStmt.target_list[i].ResTarget.val`, the only place where a masked
    /// column keeps its origin).
    fn collect_mask_fact(&mut self, frame: &mut Frame) {
        let n = self.stack.len();
        match frame.name {
            "RangeVar" => {
                let relation = RelationRef {
                    schema: frame
                        .str_field("schemaname")
                        .unwrap_or_default()
                        .to_lowercase(),
                    table: frame
                        .str_field("relname")
                        .unwrap_or_default()
                        .to_lowercase(),
                    alias: frame.alias.as_deref().map(str::to_lowercase),
                };
                if let Some(facts) = self.facts.as_mut() {
                    facts.relations.push(relation);
                }
            }
            "Alias"
                if n >= 1
                    && self.stack[n - 1].name == "RangeVar"
                    && self.stack[n - 1].field == "alias" =>
            {
                self.stack[n - 1].alias = frame.str_field("aliasname").map(str::to_string);
            }
            "AStar"
                if n >= 2
                    && self.stack[n - 2].name == "ColumnRef"
                    && self.stack[n - 2].field == "fields" =>
            {
                self.stack[n - 2].column.push(None);
            }
            "ColumnRef" => {
                let top_level = n == 4
                    && self.stack[0].name == "SelectStmt"
                    && self.stack[0].field == "target_list"
                    && self.stack[2].name == "ResTarget"
                    && self.stack[2].field == "val";
                if let Some(facts) = self.facts.as_mut() {
                    facts
                        .column_refs
                        .push((std::mem::take(&mut frame.column), top_level));
                }
            }
            _ => {}
        }
    }

    /// A String node is part of a function's name (`FuncCall.funcname[i].node.String`) or its
    /// first argument (`FuncCall.args[0].node.AConst.val.Sval`).
    fn route_string(&mut self, string: &Frame) {
        let Some(sval) = string.str_field("sval") else {
            return;
        };
        let n = self.stack.len();
        let names: Vec<&str> = self.stack[n.saturating_sub(3)..]
            .iter()
            .map(|f| f.name)
            .collect();
        match names.as_slice() {
            [.., "ColumnRef", "Node"]
                if self.facts.is_some() && self.stack[n - 2].field == "fields" =>
            {
                self.stack[n - 2].column.push(Some(sval.to_lowercase()));
            }
            [.., "FuncCall", "Node"] if self.stack[n - 2].field == "funcname" => {
                self.stack[n - 2].funcname.push(sval.to_string());
            }
            ["FuncCall", "Node", "AConst"]
                if self.stack[n - 3].field == "args"
                    && self.stack[n - 3].index == 0
                    && self.stack[n - 1].field == "val" =>
            {
                self.stack[n - 3].first_arg = Some(sval.to_string());
            }
            _ => {}
        }
    }
}

impl<'a, 'f> ser::Serializer for &'a mut Walker<'f> {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Seq<'a, 'f>;
    type SerializeTuple = Impossible<(), WalkError>;
    type SerializeTupleStruct = Impossible<(), WalkError>;
    type SerializeTupleVariant = Impossible<(), WalkError>;
    type SerializeMap = Impossible<(), WalkError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), WalkError>;

    fn serialize_bool(self, v: bool) -> Result<(), WalkError> {
        self.scalar(Scalar::Bool(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), WalkError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i16(self, v: i16) -> Result<(), WalkError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i32(self, v: i32) -> Result<(), WalkError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i64(self, v: i64) -> Result<(), WalkError> {
        self.scalar(Scalar::Int(v));
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), WalkError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_u16(self, v: u16) -> Result<(), WalkError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_u32(self, v: u32) -> Result<(), WalkError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_u64(self, v: u64) -> Result<(), WalkError> {
        self.serialize_i64(v.min(i64::MAX as u64) as i64)
    }
    fn serialize_f32(self, _: f32) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), WalkError> {
        self.scalar(Scalar::Str(v.to_string()));
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), WalkError> {
        // SELECT ... INTO creates a table: a write, wherever it appears.
        if self.stack.last().is_some_and(|f| f.field == "into_clause") {
            self.findings.escalate(StatementKind::Write);
            if self.stack.len() == 1
                && let Some(facts) = self.facts.as_mut()
            {
                facts.select_into = true;
            }
        }
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<'a, 'f>, WalkError> {
        let owner = self.stack.len().checked_sub(1);
        if let Some(top) = self.stack.last_mut()
            && len != Some(0)
        {
            top.lists.push(top.field);
        }
        Ok(Seq {
            walker: self,
            owner,
            index: 0,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, WalkError> {
        Err(unexpected("tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, WalkError> {
        Err(unexpected("tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, WalkError> {
        Err(unexpected("tuple variant"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, WalkError> {
        Err(unexpected("map"))
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, WalkError> {
        self.stack.push(Frame {
            name,
            field: "",
            index: 0,
            capture: CAPTURED.contains(&name) || (name == "Alias" && self.facts.is_some()),
            scalars: Vec::new(),
            lists: Vec::new(),
            funcname: Vec::new(),
            first_arg: None,
            alias: None,
            column: Vec::new(),
        });
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, WalkError> {
        Err(unexpected("struct variant"))
    }
}

impl ser::SerializeStruct for &mut Walker<'_> {
    type Ok = ();
    type Error = WalkError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        if let Some(top) = self.stack.last_mut() {
            top.field = key;
            top.index = 0;
        }
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), WalkError> {
        let frame = self
            .stack
            .pop()
            .ok_or_else(|| unexpected("end of message"))?;
        self.finish(frame);
        Ok(())
    }
}

/// A list field being serialized; keeps its owner's element index current.
struct Seq<'a, 'f> {
    walker: &'a mut Walker<'f>,
    owner: Option<usize>,
    index: usize,
}

impl ser::SerializeSeq for Seq<'_, '_> {
    type Ok = ();
    type Error = WalkError;

    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        if let Some(frame) = self.owner.and_then(|o| self.walker.stack.get_mut(o)) {
            frame.index = self.index;
        }
        self.index += 1;
        value.serialize(&mut *self.walker)
    }

    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}
