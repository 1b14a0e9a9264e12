//! Paged reads of `/assets`, `/assignments` and `/users` with their filters (docs/apple.md, What
//! it simulates).
//!
//! Pages are zero-based and hold `pageSize` records; an empty result is one empty page;
//! `nextPageIndex` is present only when another page follows; an index past the end answers 9650.
//! `sinceVersionId` selects records changed after that version (unknown → 9721); removed
//! assignments do not appear in deltas. `unlimitedAssets` (with `unlimited=true`) come on page 0.

use super::settings::Dataset;
use super::state::{
    AssetId, AssetState, AssignKey, Location, Refusal, State, UserRecord, assignment_view,
};
use crate::apple::codes;
use crate::apple::types::*;

/// Filters of `/assets`.
#[derive(Default)]
pub(crate) struct AssetFilter {
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub product_type: Option<String>,
    pub revocable: Option<bool>,
    pub device_assignable: Option<bool>,
    pub max_available: Option<i64>,
    pub min_available: Option<i64>,
    pub max_assigned: Option<i64>,
    pub min_assigned: Option<i64>,
    pub unlimited: Option<bool>,
}

/// Filters of `/assignments`.
#[derive(Default)]
pub(crate) struct AssignmentFilter {
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub serial_number: Option<String>,
    pub client_user_id: Option<String>,
    pub exclude_inactive_users: bool,
    pub include_user_state: bool,
    pub since: Option<String>,
}

/// Filters of `/users`.
#[derive(Default)]
pub(crate) struct UserFilter {
    pub client_user_id: Option<String>,
    pub active_only: bool,
    pub retired_only: bool,
    pub since: Option<String>,
}

/// Cuts `total` records into pages; `Err(9650)` for an index past the end. An empty result is
/// one empty page.
fn page_bounds(
    total: usize,
    size: usize,
    index: usize,
) -> Result<(usize, usize, PageInfo), Refusal> {
    let size = size.max(1);
    let pages = total.div_ceil(size).max(1);
    if index >= pages {
        return Err(Refusal::new(codes::BAD_PAGE_INDEX));
    }
    let start = index * size;
    let end = (start + size).min(total);
    let info = PageInfo {
        current_page_index: Some(index as u32),
        next_page_index: (index + 1 < pages).then_some(index as u32 + 1),
        size: Some((end - start) as u32),
        total_pages: Some(pages as u32),
        version_id: None,
    };
    Ok((start, end, info))
}

impl State {
    pub fn list_assets(
        &self,
        location: &Location,
        filter: &AssetFilter,
        index: usize,
    ) -> Result<GetAssetsResponse, Refusal> {
        let matches = |id: &AssetId, a: &AssetState| {
            filter.adam_id.as_ref().is_none_or(|v| *v == id.0)
                && filter.pricing_param.as_ref().is_none_or(|v| *v == id.1)
                && filter
                    .product_type
                    .as_ref()
                    .is_none_or(|v| v == a.product_type.as_str())
                && filter.revocable.is_none_or(|v| v == a.revocable)
                && filter
                    .device_assignable
                    .is_none_or(|v| v == a.device_assignable)
                && filter.max_available.is_none_or(|v| a.available() <= v)
                && filter.min_available.is_none_or(|v| a.available() >= v)
                && filter.max_assigned.is_none_or(|v| a.assigned <= v)
                && filter.min_assigned.is_none_or(|v| a.assigned >= v)
        };
        let mut limited = Vec::new();
        let mut unlimited = Vec::new();
        for (id, a) in &location.assets {
            if !matches(id, a) {
                continue;
            }
            match (a.unlimited, filter.unlimited) {
                (true, Some(true)) => unlimited.push(location.asset_view(id, a, false)),
                (true, Some(false)) => {}
                _ => limited.push((id, a)),
            }
        }
        let (start, end, mut page) = page_bounds(limited.len(), self.settings.page_size, index)?;
        page.version_id = Some(location.version(Dataset::Assets));
        Ok(GetAssetsResponse {
            assets: limited[start..end]
                .iter()
                .map(|(id, a)| location.asset_view(id, a, true))
                .collect(),
            unlimited_assets: if index == 0 { unlimited } else { Vec::new() },
            page,
            meta: ResponseMeta::default(),
        })
    }

    pub fn list_assignments(
        &self,
        location: &Location,
        filter: &AssignmentFilter,
        index: usize,
    ) -> Result<GetAssignmentsResponse, Refusal> {
        let since = match &filter.since {
            Some(id) => Some(
                location
                    .parse_version(Dataset::Assignments, id)
                    .ok_or_else(|| Refusal::new(codes::INVALID_VERSION_ID))?,
            ),
            None => None,
        };
        let selected: Vec<(&AssignKey, &u64)> = location
            .assignments
            .iter()
            .filter(|((adam, pricing, target), modified)| {
                since.is_none_or(|s| **modified > s)
                    && filter.adam_id.as_ref().is_none_or(|v| v == adam)
                    && filter.pricing_param.as_ref().is_none_or(|v| v == pricing)
                    && match target {
                        Target::SerialNumber(s) => {
                            filter.client_user_id.is_none()
                                && filter.serial_number.as_ref().is_none_or(|v| v == s)
                        }
                        Target::ClientUserId(u) => {
                            filter.serial_number.is_none()
                                && filter.client_user_id.as_ref().is_none_or(|v| v == u)
                                && (!filter.exclude_inactive_users
                                    || location.active_users.contains_key(u))
                        }
                    }
            })
            .collect();
        let (start, end, mut page) = page_bounds(selected.len(), self.settings.page_size, index)?;
        page.version_id = Some(location.version(Dataset::Assignments));
        let assignments = selected[start..end]
            .iter()
            .map(|(key, _)| {
                let mut view = assignment_view(key);
                if filter.include_user_state
                    && let Target::ClientUserId(u) = &key.2
                {
                    let record = location
                        .active_user(u)
                        .or_else(|| location.users.iter().rev().find(|r| r.client_user_id == *u));
                    if let Some(r) = record {
                        view.user_status = Some(r.status.clone());
                        view.id_hash = r.id_hash.clone();
                    }
                }
                view
            })
            .collect();
        Ok(GetAssignmentsResponse {
            assignments,
            page,
            meta: ResponseMeta::default(),
        })
    }

    pub fn list_users(
        &self,
        location: &Location,
        filter: &UserFilter,
        index: usize,
    ) -> Result<GetUsersResponse, Refusal> {
        let since = match &filter.since {
            Some(id) => Some(
                location
                    .parse_version(Dataset::Users, id)
                    .ok_or_else(|| Refusal::new(codes::INVALID_VERSION_ID))?,
            ),
            None => None,
        };
        let selected: Vec<&UserRecord> = location
            .users
            .iter()
            .filter(|u| {
                let retired = matches!(u.status, UserStatus::Retired | UserStatus::Deleted);
                since.is_none_or(|s| u.modified > s)
                    && filter
                        .client_user_id
                        .as_ref()
                        .is_none_or(|v| *v == u.client_user_id)
                    && !(filter.active_only && retired)
                    && (!filter.retired_only || retired)
            })
            .collect();
        let (start, end, mut page) = page_bounds(selected.len(), self.settings.page_size, index)?;
        page.version_id = Some(location.version(Dataset::Users));
        Ok(GetUsersResponse {
            users: selected[start..end].iter().map(|u| u.view()).collect(),
            page,
            meta: ResponseMeta::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_cuts_pages_and_refuses_indexes_past_the_end() {
        let (_, _, info) = page_bounds(10, 4, 2).unwrap();
        assert_eq!(info.size, Some(2));
        assert_eq!(info.total_pages, Some(3));
        assert_eq!(info.next_page_index, None);
        assert_eq!(page_bounds(10, 4, 0).unwrap().2.next_page_index, Some(1));
        assert_eq!(page_bounds(0, 4, 0).unwrap().2.total_pages, Some(1));
        assert_eq!(page_bounds(10, 4, 3).unwrap_err().number, 9650);
    }
}
