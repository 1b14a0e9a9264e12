//! The CSV cells of one item, written straight from its serialisation.
//!
//! [`Cells`] is a serde `Serializer`: a struct's fields descend along the column paths (a field
//! no column starts with is not visited), and a scalar at a column's path is that column's cell,
//! written as [`super::write_cell`] writes the same value as JSON. Anything else at or above a
//! column (an array, a map, an enum variant with data, a struct that is itself a column) is
//! collected as a [`Value`] by serde_json's own value serialiser and its columns are filled with
//! [`super::lookup`], as for a whole item turned into a `Value`: the cells are the same either
//! way, without building a `Value` tree (and its string keys) for every row.

use serde::Serialize;
use serde::ser;
use serde_json::Value;

use super::{lookup, needs_guard, write_cell};

type Error = serde_json::Error;
use serde_json::value::Serializer as ValueSer;

/// One record's cells, one per column, and where the serialiser is.
pub(super) struct Cells {
    columns: Vec<Vec<&'static str>>,
    cells: Vec<String>,
    path: Vec<&'static str>,
}

impl Cells {
    pub(super) fn new(columns: &[&'static str]) -> Self {
        Cells {
            columns: columns.iter().map(|c| c.split('.').collect()).collect(),
            cells: vec![String::new(); columns.len()],
            path: Vec::new(),
        }
    }

    pub(super) fn columns(&self) -> &[Vec<&'static str>] {
        &self.columns
    }

    /// Empties every cell (keeping their buffers).
    pub(super) fn clear(&mut self) {
        self.cells.iter_mut().for_each(String::clear);
    }

    pub(super) fn cells(&self) -> &[String] {
        &self.cells
    }

    pub(super) fn cell_mut(&mut self, i: usize) -> &mut String {
        &mut self.cells[i]
    }

    /// The cell of the column at the current path, if there is one.
    fn here(&mut self) -> Option<&mut String> {
        let i = self.columns.iter().position(|c| *c == self.path)?;
        Some(&mut self.cells[i])
    }

    /// Whether some column lies at or under the current path extended by `key`.
    fn wanted(&self, key: &str) -> bool {
        let depth = self.path.len();
        self.columns
            .iter()
            .any(|c| c.len() > depth && c[depth] == key && c[..depth] == self.path[..])
    }

    /// Fills the columns at or under the current path from `value`, the JSON there.
    fn fill(&mut self, value: &Value) {
        let depth = self.path.len();
        for (column, cell) in self.columns.iter().zip(self.cells.iter_mut()) {
            if column.len() >= depth && column[..depth] == self.path[..] {
                cell.clear();
                write_cell(cell, lookup(value, &column[depth..]));
            }
        }
    }

    fn text(&mut self, s: &str) {
        if let Some(cell) = self.here() {
            if needs_guard(s) {
                cell.push('\'');
            }
            cell.push_str(s);
        }
    }

    fn json(&mut self, value: Value) {
        if let Some(cell) = self.here() {
            write_cell(cell, Some(&value));
        }
    }

    /// The current path is exactly a column: a compound value there is that column's JSON.
    fn is_column(&self) -> bool {
        self.columns.contains(&self.path)
    }
}

/// A compound value collected as a `Value` by serde_json, then spread over the columns.
pub(super) struct Collect<'a, S> {
    cells: &'a mut Cells,
    inner: S,
}

/// A struct's fields: descending along the columns, or collected (a struct that is a column).
pub(super) enum Fields<'a> {
    Descend(&'a mut Cells),
    Collect(Collect<'a, <ValueSer as ser::Serializer>::SerializeStruct>),
}

impl<'a> ser::Serializer for &'a mut Cells {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Collect<'a, <ValueSer as ser::Serializer>::SerializeSeq>;
    type SerializeTuple = Collect<'a, <ValueSer as ser::Serializer>::SerializeTuple>;
    type SerializeTupleStruct = Collect<'a, <ValueSer as ser::Serializer>::SerializeTupleStruct>;
    type SerializeTupleVariant = Collect<'a, <ValueSer as ser::Serializer>::SerializeTupleVariant>;
    type SerializeMap = Collect<'a, <ValueSer as ser::Serializer>::SerializeMap>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant =
        Collect<'a, <ValueSer as ser::Serializer>::SerializeStructVariant>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        if let Some(cell) = self.here() {
            cell.push_str(if v { "true" } else { "false" });
        }
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        if let Some(cell) = self.here() {
            use std::fmt::Write;
            let _ = write!(cell, "{v}");
        }
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        let value = ValueSer.serialize_i128(v)?;
        self.json(value);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        if let Some(cell) = self.here() {
            use std::fmt::Write;
            let _ = write!(cell, "{v}");
        }
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        let value = ValueSer.serialize_u128(v)?;
        self.json(value);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.json(Value::from(v));
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.json(Value::from(v));
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.text(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.text(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        let value = ValueSer.serialize_bytes(v)?;
        self.fill(&value);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.text(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let value = ValueSer.serialize_newtype_variant(name, index, variant, value)?;
        self.fill(&value);
        Ok(())
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Ok(Collect {
            inner: ValueSer.serialize_seq(len)?,
            cells: self,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Error> {
        Ok(Collect {
            inner: ValueSer.serialize_tuple(len)?,
            cells: self,
        })
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Ok(Collect {
            inner: ValueSer.serialize_tuple_struct(name, len)?,
            cells: self,
        })
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Ok(Collect {
            inner: ValueSer.serialize_tuple_variant(name, index, variant, len)?,
            cells: self,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Ok(Collect {
            inner: ValueSer.serialize_map(len)?,
            cells: self,
        })
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        if self.is_column() {
            Ok(Fields::Collect(Collect {
                inner: ValueSer.serialize_struct(name, len)?,
                cells: self,
            }))
        } else {
            Ok(Fields::Descend(self))
        }
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Ok(Collect {
            inner: ValueSer.serialize_struct_variant(name, index, variant, len)?,
            cells: self,
        })
    }
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        match self {
            Fields::Descend(cells) => {
                if !cells.wanted(key) {
                    return Ok(());
                }
                cells.path.push(key);
                let outcome = value.serialize(&mut **cells);
                cells.path.pop();
                outcome
            }
            Fields::Collect(c) => c.inner.serialize_field(key, value),
        }
    }

    fn end(self) -> Result<(), Error> {
        match self {
            Fields::Descend(_) => Ok(()),
            Fields::Collect(c) => {
                let value = ser::SerializeStruct::end(c.inner)?;
                c.cells.fill(&value);
                Ok(())
            }
        }
    }
}

impl<S: ser::SerializeSeq<Ok = Value, Error = Error>> ser::SerializeSeq for Collect<'_, S> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.inner.serialize_element(value)
    }
    fn end(self) -> Result<(), Error> {
        let value = ser::SerializeSeq::end(self.inner)?;
        self.cells.fill(&value);
        Ok(())
    }
}

impl<S: ser::SerializeTuple<Ok = Value, Error = Error>> ser::SerializeTuple for Collect<'_, S> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.inner.serialize_element(value)
    }
    fn end(self) -> Result<(), Error> {
        let value = ser::SerializeTuple::end(self.inner)?;
        self.cells.fill(&value);
        Ok(())
    }
}

impl<S: ser::SerializeTupleStruct<Ok = Value, Error = Error>> ser::SerializeTupleStruct
    for Collect<'_, S>
{
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.inner.serialize_field(value)
    }
    fn end(self) -> Result<(), Error> {
        let value = ser::SerializeTupleStruct::end(self.inner)?;
        self.cells.fill(&value);
        Ok(())
    }
}

impl<S: ser::SerializeTupleVariant<Ok = Value, Error = Error>> ser::SerializeTupleVariant
    for Collect<'_, S>
{
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.inner.serialize_field(value)
    }
    fn end(self) -> Result<(), Error> {
        let value = ser::SerializeTupleVariant::end(self.inner)?;
        self.cells.fill(&value);
        Ok(())
    }
}

impl<S: ser::SerializeMap<Ok = Value, Error = Error>> ser::SerializeMap for Collect<'_, S> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Error> {
        self.inner.serialize_key(key)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        self.inner.serialize_value(value)
    }
    fn end(self) -> Result<(), Error> {
        let value = ser::SerializeMap::end(self.inner)?;
        self.cells.fill(&value);
        Ok(())
    }
}

impl<S: ser::SerializeStructVariant<Ok = Value, Error = Error>> ser::SerializeStructVariant
    for Collect<'_, S>
{
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.inner.serialize_field(key, value)
    }
    fn end(self) -> Result<(), Error> {
        let value = ser::SerializeStructVariant::end(self.inner)?;
        self.cells.fill(&value);
        Ok(())
    }
}
