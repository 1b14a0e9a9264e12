//! A typed client of the API: requests go over real HTTP to the running server, answers are read
//! into the API's own DTOs (`vpp_broker::api::…`), so a test names fields the compiler checks
//! instead of looking them up in `serde_json::Value`.
//!
//! Tests that deliberately inspect the wire (problem bodies, absent fields, the OpenAPI document,
//! hostile input, byte-for-byte replays) keep reading `Value`.

use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;
use vpp_broker::api::accounts::{Account, AccountList, AccountOrder, TestResult};
use vpp_broker::api::assignments::{Allocation, Assignment, AssignmentPage, Revocation};
use vpp_broker::api::policies::{Policy, PolicyList};

use super::TestApp;

/// Reads an answer: asserts its status, then its body as a `T`. Either failure shows the body.
pub async fn read<T: DeserializeOwned>(resp: Response, status: u16) -> T {
    let got = resp.status().as_u16();
    let text = resp.text().await.expect("answer body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "answer is not a {}: {e}; body: {text}",
            std::any::type_name::<T>()
        )
    })
}

/// An assignment state a license ends in.
pub fn is_final(state: &str) -> bool {
    ["active", "failed", "revoked"].contains(&state)
}

impl TestApp {
    /// A client of space `space`, calling as admin.
    pub fn client<'a>(&'a self, space: &'a str) -> Client<'a> {
        Client { app: self, space }
    }

    /// `GET path` as admin; asserts 200 and reads the body as a `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> T {
        read(self.req(Method::GET, path).send().await.unwrap(), 200).await
    }
}

/// The API of one space, as admin.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    pub app: &'a TestApp,
    pub space: &'a str,
}

impl Client<'_> {
    /// A request to `path` under `/v1/spaces/{space}` (`path` starts with `/`).
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.app
            .req(method, &format!("/v1/spaces/{}{path}", self.space))
    }

    /// `GET path` under the space; asserts 200 and reads the body as a `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        read(self.req(Method::GET, path).send().await.unwrap(), 200).await
    }

    /// The status of `GET path` under the space.
    pub async fn status_of(&self, path: &str) -> u16 {
        self.req(Method::GET, path)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    // Accounts

    /// Attaches an account by sToken (asserts 201).
    pub async fn attach(&self, name: &str, stoken: &str) -> Account {
        let resp = self
            .req(Method::POST, "/accounts")
            .json(&serde_json::json!({"name": name, "stoken": stoken}))
            .send()
            .await
            .unwrap();
        read(resp, 201).await
    }

    pub async fn account(&self, id: Uuid) -> Account {
        self.get(&format!("/accounts/{id}")).await
    }

    pub async fn accounts(&self) -> AccountList {
        self.get("/accounts").await
    }

    pub async fn account_order(&self) -> AccountOrder {
        self.get("/account-order").await
    }

    /// `PUT …/account-order` (asserts 200).
    pub async fn reorder(&self, order: &[Uuid]) -> AccountList {
        let resp = self
            .req(Method::PUT, "/account-order")
            .json(&serde_json::json!({ "order": order }))
            .send()
            .await
            .unwrap();
        read(resp, 200).await
    }

    /// `PATCH …/accounts/{id}` (asserts 200).
    pub async fn update_account(&self, id: Uuid, body: &Value) -> Account {
        let resp = self
            .req(Method::PATCH, &format!("/accounts/{id}"))
            .json(body)
            .send()
            .await
            .unwrap();
        read(resp, 200).await
    }

    /// `POST …/accounts/{id}/test` (asserts 200).
    pub async fn test_account(&self, id: Uuid) -> TestResult {
        let resp = self
            .req(Method::POST, &format!("/accounts/{id}/test"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        read(resp, 200).await
    }

    /// Waits until the account is gone (its `GET` answers 404), e.g. after a deletion that waited
    /// for Apple to release its licenses.
    pub async fn account_removed(&self, id: Uuid) {
        let path = format!("/accounts/{id}");
        super::eventually(
            &format!("account {id} removed"),
            async || self.status_of(&path).await,
            |status| *status == 404,
        )
        .await;
    }

    // Assignments

    /// `POST …/assignments`, the answer as it comes.
    pub async fn allocate(&self, body: &Value) -> Response {
        self.req(Method::POST, "/assignments")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Allocates; asserts 201 (a license was allocated).
    pub async fn allocated(&self, body: &Value) -> Allocation {
        read(self.allocate(body).await, 201).await
    }

    pub async fn assignment(&self, id: Uuid) -> Assignment {
        self.get(&format!("/assignments/{id}")).await
    }

    /// `GET …/assignments?{query}`.
    pub async fn assignments(&self, query: &str) -> AssignmentPage {
        self.get(&format!("/assignments?{query}")).await
    }

    /// Waits (through the API's bounded wait) until the assignment reaches a final state.
    pub async fn final_state(&self, id: Uuid) -> Assignment {
        let v: Assignment = self.get(&format!("/assignments/{id}?wait=20")).await;
        assert!(is_final(v.state.as_str()), "not final after 20 s: {v:?}");
        v
    }

    /// `DELETE …/assignments/{id}{query}`, the answer as it comes.
    pub async fn revoke(&self, id: Uuid, query: &str) -> Response {
        self.req(Method::DELETE, &format!("/assignments/{id}{query}"))
            .send()
            .await
            .unwrap()
    }

    /// `POST …/revocations` (asserts 202).
    pub async fn revocations(&self, body: &Value) -> Revocation {
        let resp = self
            .req(Method::POST, "/revocations")
            .json(body)
            .send()
            .await
            .unwrap();
        read(resp, 202).await
    }

    // Policies

    /// `PUT …/policies/{adam_id}/{pricing}`, the answer as it comes.
    pub async fn put_policy(&self, adam_id: &str, pricing: &str, body: &Value) -> Response {
        self.req(Method::PUT, &format!("/policies/{adam_id}/{pricing}"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn policy(&self, adam_id: &str, pricing: &str) -> Policy {
        self.get(&format!("/policies/{adam_id}/{pricing}")).await
    }

    pub async fn policies(&self) -> PolicyList {
        self.get("/policies").await
    }
}

/// The assignment of an allocation that took a license (every allocation but a dry run).
pub trait Allocated {
    fn assignment(&self) -> &Assignment;
    /// The assignment's id.
    fn id(&self) -> Uuid {
        self.assignment().id
    }
}

impl Allocated for Allocation {
    fn assignment(&self) -> &Assignment {
        self.assignment
            .as_ref()
            .unwrap_or_else(|| panic!("the allocation has no assignment: {self:?}"))
    }
}
