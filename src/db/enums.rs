//! Enums stored as `text` columns guarded by CHECK constraints.
//!
//! Text (rather than PostgreSQL enum types) keeps migrations simple (adding a value is a CHECK
//! change, not an `ALTER TYPE`), and the [`text_enum!`](crate::text_enum) macro gives each enum one spelling shared
//! by the database, the JSON API and the OpenAPI document.

/// Declares an enum stored as text: diesel `ToSql`/`FromSql`, serde and utoipa in one spelling.
///
/// The spelling is taken as a `tt` fragment, not `literal`: a `literal` fragment reaches derive
/// macros wrapped in an invisible group, which utoipa's `#[serde(rename = …)]` parser ignores
/// (the document then showed the Rust variant names while the wire used the spelling).
/// `tests/it/openapi.rs` compares every documented enum with what serde writes.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:tt ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, utoipa::ToSchema,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and serialized spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} value {other:?}", stringify!($name))),
                }
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    diesel::pg::Pg,
                >>::from_sql(bytes)?;
                text.parse::<$name>().map_err(Into::into)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::text_enum! {
        /// Test enum.
        pub enum Colour { Red = "red", DarkBlue = "dark_blue" }
    }

    #[test]
    fn text_enum_round_trips_through_its_spelling() {
        for c in Colour::ALL {
            assert_eq!(c.as_str().parse::<Colour>().unwrap(), *c);
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::Value::String(c.as_str().into())
            );
        }
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
        assert!(
            "blue"
                .parse::<Colour>()
                .unwrap_err()
                .contains("unknown Colour")
        );
    }
}
