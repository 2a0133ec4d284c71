//! Consumer-side filter expressions. TAG expressions (`*`, `TagA || TagB`) are supported;
//! SQL92 filters are refused with a clear error until they are implemented.

use raftmq_proto::rocketmq::v2::{self as v2, Code};

use super::status::Rejection;

#[derive(Debug, Clone, PartialEq)]
pub enum TagFilter {
    All,
    AnyOf(Vec<String>),
}

impl TagFilter {
    pub fn parse(expression: Option<&v2::FilterExpression>) -> Result<TagFilter, Rejection> {
        let Some(expression) = expression else {
            return Ok(TagFilter::All);
        };
        if expression.r#type == v2::FilterType::Sql as i32 {
            return Err(Rejection::new(
                Code::Unsupported,
                "SQL92 filters are not supported yet; use a TAG filter",
            ));
        }
        let text = expression.expression.trim();
        if text.is_empty() || text == "*" {
            return Ok(TagFilter::All);
        }
        let tags: Vec<String> = text
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if tags.is_empty() {
            return Err(Rejection::new(
                Code::IllegalFilterExpression,
                format!("bad tag expression `{text}`"),
            ));
        }
        Ok(TagFilter::AnyOf(tags))
    }

    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::AnyOf(tags) => tag.is_some_and(|tag| tags.iter().any(|t| t == tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(expression: &str) -> TagFilter {
        TagFilter::parse(Some(&v2::FilterExpression {
            r#type: v2::FilterType::Tag as i32,
            expression: expression.into(),
        }))
        .unwrap()
    }

    #[test]
    fn tag_expressions_match_like_rocketmq() {
        assert!(tag("*").matches(None));
        assert!(tag("").matches(Some("x")));
        let ab = tag(" TagA || TagB ||");
        assert!(ab.matches(Some("TagA")) && ab.matches(Some("TagB")));
        assert!(!ab.matches(Some("TagC")) && !ab.matches(None));
    }

    #[test]
    fn sql_filters_are_refused_for_now() {
        let err = TagFilter::parse(Some(&v2::FilterExpression {
            r#type: v2::FilterType::Sql as i32,
            expression: "a > 1".into(),
        }))
        .unwrap_err();
        assert_eq!(Code::Unsupported, err.code);
    }
}
