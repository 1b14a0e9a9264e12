//! Asynchronous events (docs/apple.md, What it simulates): the synchronous checks that turn a
//! request into tasks (or refuse it with Apple's number), the queue, and processing in submission
//! order with one outcome per task, the `/status` view and the notifications an event causes.
//!
//! Tasks are fixed when a request is accepted: assets × (clientUserIds, then serialNumbers) for
//! associate/disassociate; for revoke, every revocable assignment its targets hold at that moment.
//! A task that cannot be done fails alone (9709 when licenses run out, 9609 for an unknown user,
//! 9716 for an existing user); the event is COMPLETE without failures, else FAILED, with
//! `failures` grouped by error number. Notifications: ≤ 100 items each, one for the successes and
//! one per error number.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::notify::Outgoing;
use super::settings::Dataset;
use super::state::{Event, Location, Refusal, State, Task, asset_id, assignment_view, id_hash};
use crate::apple::codes;
use crate::apple::types::*;

/// The counter (in `GET /admin/counters`) of associations an event failed with 9709 because the
/// location had no license left — Apple's own, not a fault injected by `failNext`.
pub const NOT_ENOUGH: &str = "9709 notEnoughLicenses";

/// Elements per notification (Apple: 100).
const NOTIFICATION_CHUNK: usize = 100;

/// Successes and failures (by error number) of one event.
struct Outcome<T> {
    successes: Vec<T>,
    failures: BTreeMap<i32, Vec<T>>,
}

impl<T> Outcome<T> {
    fn new() -> Self {
        Outcome {
            successes: Vec::new(),
            failures: BTreeMap::new(),
        }
    }

    fn record(&mut self, item: T, result: Result<(), i32>) {
        match result {
            Ok(()) => self.successes.push(item),
            Err(n) => self.failures.entry(n).or_default().push(item),
        }
    }

    /// Completes `event`: its count and one error object per error number, each naming its
    /// items (`name` adds one item's ids to `errorInfo`).
    fn finish(&self, event: &mut Event, name: impl Fn(&mut ErrorInfo, &T)) {
        event.num_completed = self.successes.len() as i64;
        event.failures = self
            .failures
            .iter()
            .map(|(number, items)| {
                let mut e = error_object(*number);
                for item in items {
                    name(&mut e.error_info, item);
                }
                e
            })
            .collect();
    }

    /// The completion notifications: the successes, then each error number's items, at most
    /// [`NOTIFICATION_CHUNK`] a piece. `payload` builds one body from its items and error.
    fn notifications(
        &self,
        location: &Location,
        kind: NotificationType,
        payload: impl Fn(&[T], NotificationResult, Option<ErrorResponse>) -> serde_json::Value,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for chunk in self.successes.chunks(NOTIFICATION_CHUNK) {
            let body = payload(chunk, NotificationResult::Success, None);
            out.extend(location.notification(kind.clone(), body));
        }
        for (number, items) in &self.failures {
            for chunk in items.chunks(NOTIFICATION_CHUNK) {
                let body = payload(
                    chunk,
                    NotificationResult::Failure,
                    Some(error_object(*number)),
                );
                out.extend(location.notification(kind.clone(), body));
            }
        }
        out
    }
}

fn error_object(number: i32) -> ErrorResponse {
    ErrorResponse {
        error_number: Some(number),
        error_message: Some(codes::message(number).to_owned()),
        error_info: ErrorInfo::default(),
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

impl State {
    /// Synchronous checks of associate/disassociate (empty lists, limits, duplicates, blank
    /// targets, then unknown, non-device-assignable or non-revocable assets), then the event's
    /// tasks.
    pub fn manage_assets_tasks(
        &self,
        location: &Location,
        request: &ManageAssetsRequest,
        associate: bool,
    ) -> Result<Vec<Task>, Refusal> {
        let s = &self.settings;
        if request.assets.is_empty() {
            return Err(Refusal::new(codes::NO_ASSETS));
        }
        if request.client_user_ids.is_empty() && request.serial_numbers.is_empty() {
            return Err(Refusal::new(codes::NO_TARGETS));
        }
        if request.assets.len() > s.limit("maxAssets") {
            return Err(Refusal::new(codes::TOO_MANY_ASSETS));
        }
        if request.client_user_ids.len() > s.limit("maxClientUserIds") {
            return Err(Refusal::new(codes::TOO_MANY_CLIENT_USER_IDS));
        }
        if request.serial_numbers.len() > s.limit("maxSerialNumbers") {
            return Err(Refusal::new(codes::TOO_MANY_SERIAL_NUMBERS));
        }
        duplicates(&request.assets, codes::DUPLICATE_ASSETS, |info, a| {
            info.assets.push(a.clone())
        })?;
        duplicates(
            &request.client_user_ids,
            codes::DUPLICATE_CLIENT_USER_IDS,
            |info, u| info.client_user_ids.push(u.clone()),
        )?;
        duplicates(
            &request.serial_numbers,
            codes::DUPLICATE_SERIAL_NUMBERS,
            |info, s| info.serial_numbers.push(s.clone()),
        )?;
        if request
            .client_user_ids
            .iter()
            .chain(&request.serial_numbers)
            .any(|t| t.trim().is_empty())
        {
            return Err(Refusal::new(codes::INVALID_ARGUMENT));
        }
        let refuse_assets = |number, assets: Vec<AssetKey>| {
            if assets.is_empty() {
                Ok(())
            } else {
                Err(Refusal {
                    number,
                    info: ErrorInfo {
                        assets,
                        ..Default::default()
                    },
                })
            }
        };
        let unknown: Vec<AssetKey> = request
            .assets
            .iter()
            .filter(|a| location.asset(a).is_none())
            .cloned()
            .collect();
        refuse_assets(codes::INVALID_ARGUMENT, unknown)?;
        if associate && !request.serial_numbers.is_empty() {
            let not_device: Vec<AssetKey> = request
                .assets
                .iter()
                .filter(|a| location.asset(a).is_some_and(|s| !s.device_assignable))
                .cloned()
                .collect();
            refuse_assets(codes::NOT_DEVICE_ASSIGNABLE, not_device)?;
        }
        if !associate {
            let not_revocable: Vec<AssetKey> = request
                .assets
                .iter()
                .filter(|a| location.asset(a).is_some_and(|s| !s.revocable))
                .cloned()
                .collect();
            refuse_assets(codes::NOT_REVOCABLE, not_revocable)?;
        }
        let targets: Vec<Target> = request
            .client_user_ids
            .iter()
            .map(|u| Target::ClientUserId(u.clone()))
            .chain(
                request
                    .serial_numbers
                    .iter()
                    .map(|s| Target::SerialNumber(s.clone())),
            )
            .collect();
        let mut tasks = Vec::with_capacity(request.assets.len() * targets.len());
        for asset in &request.assets {
            for target in &targets {
                tasks.push(if associate {
                    Task::Associate(asset.clone(), target.clone())
                } else {
                    Task::Disassociate(asset.clone(), target.clone())
                });
            }
        }
        Ok(tasks)
    }

    /// Synchronous checks of revoke; the targets' revocable assignments become the tasks.
    pub fn revoke_tasks(
        &self,
        location: &Location,
        request: &RevokeAssetsRequest,
    ) -> Result<Vec<Task>, Refusal> {
        let s = &self.settings;
        if request.client_user_ids.is_empty() && request.serial_numbers.is_empty() {
            return Err(Refusal::new(codes::NO_TARGETS));
        }
        if request.client_user_ids.len() > s.limit("maxRevokeClientUserIds") {
            return Err(Refusal::new(codes::TOO_MANY_CLIENT_USER_IDS));
        }
        if request.serial_numbers.len() > s.limit("maxRevokeSerialNumbers") {
            return Err(Refusal::new(codes::TOO_MANY_SERIAL_NUMBERS));
        }
        duplicates(
            &request.client_user_ids,
            codes::DUPLICATE_CLIENT_USER_IDS,
            |info, u| info.client_user_ids.push(u.clone()),
        )?;
        duplicates(
            &request.serial_numbers,
            codes::DUPLICATE_SERIAL_NUMBERS,
            |info, s| info.serial_numbers.push(s.clone()),
        )?;
        let targets = request
            .client_user_ids
            .iter()
            .map(|u| Target::ClientUserId(u.clone()))
            .chain(
                request
                    .serial_numbers
                    .iter()
                    .map(|s| Target::SerialNumber(s.clone())),
            );
        let mut tasks = Vec::new();
        for target in targets {
            for asset in location.revocable_of(&target) {
                tasks.push(Task::Disassociate(asset, target.clone()));
            }
        }
        Ok(tasks)
    }

    /// Synchronous checks of users create/update/retire.
    pub fn user_tasks(
        &self,
        request: &ManageUsersRequest,
        kind: &EventType,
    ) -> Result<Vec<Task>, Refusal> {
        if request.users.is_empty() {
            return Err(Refusal::new(codes::NO_USERS));
        }
        if request.users.len() > self.settings.limit("maxUsers") {
            return Err(Refusal::new(codes::TOO_MANY_USERS));
        }
        if request
            .users
            .iter()
            .any(|u| u.client_user_id.trim().is_empty())
        {
            return Err(Refusal::new(codes::INVALID_ARGUMENT));
        }
        let ids: Vec<&String> = request.users.iter().map(|u| &u.client_user_id).collect();
        duplicates(&ids, codes::DUPLICATE_USERS, |info, u| {
            info.client_user_ids.push((*u).clone())
        })?;
        let bad_email: Vec<String> = request
            .users
            .iter()
            .filter(|u| u.email.as_deref().is_some_and(|e| !valid_email(e)))
            .map(|u| u.client_user_id.clone())
            .collect();
        if !bad_email.is_empty() {
            return Err(Refusal {
                number: codes::INVALID_EMAIL,
                info: ErrorInfo {
                    client_user_ids: bad_email,
                    ..Default::default()
                },
            });
        }
        Ok(request
            .users
            .iter()
            .map(|u| match kind {
                EventType::Create => Task::Create(u.clone()),
                EventType::Update => Task::Update(u.clone()),
                _ => Task::Retire(u.client_user_id.clone()),
            })
            .collect())
    }

    /// Queues an accepted event; returns its id.
    pub fn submit(&mut self, location: &str, kind: EventType, tasks: Vec<Task>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let due = Instant::now() + Duration::from_millis(self.settings.event_delay_ms);
        self.events.insert(
            id.clone(),
            Event {
                location: location.to_owned(),
                kind,
                num_requested: tasks.len() as i64,
                tasks,
                due,
                done: false,
                num_completed: 0,
                failures: Vec::new(),
            },
        );
        self.queue.push_back(id.clone());
        id
    }

    /// Runs due events in order (all queued ones with `force`); returns notifications to send and
    /// when the next event is due.
    pub fn process_due(&mut self, now: Instant, force: bool) -> (Vec<Outgoing>, Option<Instant>) {
        let mut out = Vec::new();
        while let Some(id) = self.queue.front().cloned() {
            match self.events.get(&id).map(|e| e.due) {
                Some(due) if due > now && !force => return (out, Some(due)),
                Some(_) => {
                    self.queue.pop_front();
                    self.process_event(&id, &mut out);
                }
                None => {
                    self.queue.pop_front();
                }
            }
        }
        (out, None)
    }

    /// Processes one event's tasks. An association that finds no license left counts under
    /// [`NOT_ENOUGH`] (tests check the service never causes one).
    fn process_event(&mut self, id: &str, out: &mut Vec<Outgoing>) {
        let retire_releases = self.settings.retire_releases_licenses;
        let State {
            events,
            locations,
            counters,
            ..
        } = self;
        let Some(event) = events.get_mut(id) else {
            return;
        };
        let tasks = std::mem::take(&mut event.tasks);
        event.done = true;
        let Some(location) = locations.get_mut(&event.location) else {
            event.failures = vec![error_object(codes::INTERNAL_ERROR)];
            return;
        };
        match event.kind {
            EventType::Associate | EventType::Disassociate | EventType::Revoke => {
                let mut outcome: Outcome<Assignment> = Outcome::new();
                for task in tasks {
                    let (key, target, result) = match task {
                        Task::Associate(key, target) => {
                            let r = location.assign(&key, &target);
                            if r == Err(codes::NOT_ENOUGH_LICENSES) {
                                *counters.entry(NOT_ENOUGH.to_owned()).or_default() += 1;
                            }
                            (key, target, r)
                        }
                        Task::Disassociate(key, target) => {
                            location.unassign(&key, &target);
                            (key, target, Ok(()))
                        }
                        _ => continue,
                    };
                    let (adam, pricing) = asset_id(&key);
                    outcome.record(assignment_view(&(adam, pricing, target)), result);
                }
                outcome.finish(event, |info, a| {
                    push_unique(&mut info.assets, a.key());
                    if let Some(s) = &a.serial_number {
                        push_unique(&mut info.serial_numbers, s.clone());
                    }
                    if let Some(u) = &a.client_user_id {
                        push_unique(&mut info.client_user_ids, u.clone());
                    }
                });
                let kind = event.kind.clone();
                out.extend(outcome.notifications(
                    location,
                    NotificationType::AssetManagement,
                    |chunk, result, error| {
                        serde_json::to_value(AssetManagementNotification {
                            assignments: chunk.to_vec(),
                            event_id: Some(id.to_owned()),
                            result: Some(result),
                            kind: Some(kind.clone()),
                            error,
                        })
                        .unwrap_or_default()
                    },
                ));
            }
            _ => {
                let mut outcome: Outcome<User> = Outcome::new();
                for task in tasks {
                    let (view, result) = match task {
                        Task::Create(user) => {
                            if location.active_users.contains_key(&user.client_user_id) {
                                (request_view(&user), Err(codes::USER_EXISTS))
                            } else {
                                let i = location.add_user(
                                    &user.client_user_id,
                                    user.email.clone(),
                                    user.managed_apple_id.as_deref(),
                                );
                                (location.users[i].view(), Ok(()))
                            }
                        }
                        Task::Update(user) => {
                            match location.active_users.get(&user.client_user_id).copied() {
                                None => (request_view(&user), Err(codes::USER_NOT_FOUND)),
                                Some(i) => {
                                    let modified = location.bump(Dataset::Users);
                                    let record = &mut location.users[i];
                                    if let Some(email) = &user.email {
                                        record.email = Some(email.clone());
                                    }
                                    if let Some(managed) = &user.managed_apple_id {
                                        record.id_hash = Some(id_hash(managed));
                                        record.status = UserStatus::Associated;
                                    }
                                    record.modified = modified;
                                    (record.view(), Ok(()))
                                }
                            }
                        }
                        Task::Retire(client_user_id) => {
                            match location.active_users.remove(&client_user_id) {
                                None => (
                                    User {
                                        client_user_id,
                                        ..Default::default()
                                    },
                                    Err(codes::USER_NOT_FOUND),
                                ),
                                Some(i) => {
                                    let modified = location.bump(Dataset::Users);
                                    let record = &mut location.users[i];
                                    record.status = UserStatus::Retired;
                                    record.modified = modified;
                                    let view = record.view();
                                    if retire_releases {
                                        let target = Target::ClientUserId(client_user_id);
                                        for key in location.revocable_of(&target) {
                                            location.unassign(&key, &target);
                                        }
                                    }
                                    (view, Ok(()))
                                }
                            }
                        }
                        _ => continue,
                    };
                    outcome.record(view, result);
                }
                outcome.finish(event, |info, u| {
                    push_unique(&mut info.client_user_ids, u.client_user_id.clone());
                });
                let kind = event.kind.clone();
                out.extend(outcome.notifications(
                    location,
                    NotificationType::UserManagement,
                    |chunk, result, error| {
                        serde_json::to_value(UserManagementNotification {
                            users: chunk.to_vec(),
                            event_id: Some(id.to_owned()),
                            result: Some(result),
                            kind: Some(kind.clone()),
                            error,
                        })
                        .unwrap_or_default()
                    },
                ));
            }
        }
    }

    /// `GET /status` view of an event of `location`.
    pub fn status(
        &self,
        location: &Location,
        event_id: &str,
        exp_date: DateTime<Utc>,
    ) -> Option<StatusResponse> {
        let event = self.events.get(event_id)?;
        if event.location != location.u_id {
            return None;
        }
        Some(StatusResponse {
            event_status: Some(match (event.done, event.failures.is_empty()) {
                (false, _) => EventStatus::Pending,
                (true, true) => EventStatus::Complete,
                (true, false) => EventStatus::Failed,
            }),
            event_type: Some(event.kind.clone()),
            num_requested: Some(event.num_requested),
            num_completed: Some(event.num_completed),
            failures: event.failures.clone(),
            meta: self.meta(location, exp_date),
        })
    }
}

fn request_view(user: &RequestUser) -> User {
    User {
        client_user_id: user.client_user_id.clone(),
        email: user.email.clone(),
        ..Default::default()
    }
}

/// Refuses the first repeated entry with `number`, listing it in `errorInfo`.
fn duplicates<T: Ord>(
    items: &[T],
    number: i32,
    describe: impl Fn(&mut ErrorInfo, &T),
) -> Result<(), Refusal> {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(item) {
            let mut refusal = Refusal::new(number);
            describe(&mut refusal.info, item);
            return Err(refusal);
        }
    }
    Ok(())
}

/// A plain check: one `@`, something on both sides, a dot in the domain, no spaces.
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apple_sim::state::tests::location_with;

    #[test]
    fn licenses_running_out_fail_the_rest_with_9709() {
        let (mut state, u_id) = location_with(2);
        let loc = &state.locations[&u_id];
        let request = ManageAssetsRequest::devices(
            vec![AssetKey::stdq("1")],
            vec!["A".into(), "B".into(), "C".into()],
        );
        let tasks = state.manage_assets_tasks(loc, &request, true).unwrap();
        let id = state.submit(&u_id, EventType::Associate, tasks);
        state.process_due(Instant::now(), true);
        let exp = Utc::now() + chrono::Duration::days(1);
        let status = state.status(&state.locations[&u_id], &id, exp).unwrap();
        assert_eq!(status.event_status, Some(EventStatus::Failed));
        assert_eq!(status.num_requested, Some(3));
        assert_eq!(status.num_completed, Some(2));
        assert_eq!(status.failures[0].error_number, Some(9709));
        assert_eq!(status.failures[0].error_info.serial_numbers, ["C"]);
        let snapshot = state.snapshot(&u_id).unwrap();
        assert_eq!(snapshot.assets[0].available_count, Some(0));
        assert_eq!(snapshot.assignments.len(), 2);
    }

    #[test]
    fn emails_are_checked_plainly() {
        assert!(valid_email("a@b.example"));
        for bad in ["", "a", "a@", "@b.c", "a@b", "a b@c.d", "a@b@c.d", "a@.b"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
