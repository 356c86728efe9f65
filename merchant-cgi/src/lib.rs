//! # payme-cgi
//!
//! A CGI/1.1 program (RFC 3875) that sells items from any web server: GET shows an item
//! and a confirm form (GET never spends money: link prefetchers and scanners follow links),
//! POST buys it by asking the merchant's wallet to collect the price from the buyer's
//! wallet, found at REMOTE_ADDR and the configured wallet port, or at an address the buyer
//! gives in the form. The item is printed with `Status: 200` and its content type, or a
//! page with `Status: 402 Payment Required` and the reason.
//!
//! [`handle`] does all of it from the CGI environment and standard input, so it is tested
//! without a web server; `main.rs` only reads the environment and writes the response.

#![forbid(unsafe_code)]

pub mod config;
pub mod wallet;

use config::Config;
use std::collections::HashMap;
use std::io::Read;
use wallet::{Collector, Outcome};

/// Most bytes of a form accepted from a buyer.
pub const MAX_FORM: usize = 4096;

/// A CGI response: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The bytes a CGI program writes to standard output.
    pub fn to_cgi(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("Status: {} {}\r\n", self.status, self.reason).into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The request, from the CGI meta-variables.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// PATH_INFO without the leading slash, else the `item` query parameter.
    pub item: Option<String>,
    pub remote_addr: String,
    pub script_name: String,
    pub content_type: String,
    pub content_length: Option<usize>,
}

impl Request {
    pub fn from_env(env: &HashMap<String, String>) -> Request {
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let path_item = get("PATH_INFO").trim_matches('/').to_owned();
        let query = parse_form(&get("QUERY_STRING"));
        let item = if path_item.is_empty() { query.get("item").cloned() } else { Some(path_item) };
        Request {
            method: get("REQUEST_METHOD").to_ascii_uppercase(),
            item: item.filter(|i| !i.is_empty()),
            remote_addr: get("REMOTE_ADDR"),
            script_name: get("SCRIPT_NAME"),
            content_type: get("CONTENT_TYPE"),
            content_length: env.get("CONTENT_LENGTH").and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` (a query string or a POSTed form); of a
/// key given twice, the last value counts. Bytes that are not UTF-8 become U+FFFD.
pub fn parse_form(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push_str(&format!("&#{};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn page(status: u16, reason: &'static str, title: &str, body_html: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n<h1>{t}</h1>\n{body_html}\n</body></html>\n",
        t = html_escape(title)
    );
    Response {
        status,
        reason,
        headers: vec![
            ("Content-Type".into(), "text/html; charset=utf-8".into()),
            ("Cache-Control".into(), "no-store".into()),
        ],
        body: html.into_bytes(),
    }
}

fn item_url(req: &Request, id: &str) -> String {
    format!("{}/{}", req.script_name.trim_end_matches('/'), id)
}

/// Handles one CGI request. `stdin` is read only for POST, at most CONTENT_LENGTH bytes
/// (and never more than [`MAX_FORM`]).
pub fn handle(req: &Request, stdin: &mut dyn Read, config: &Config, wallet: &dyn Collector) -> Response {
    match req.method.as_str() {
        "GET" | "HEAD" => show(req, config),
        "POST" => buy(req, stdin, config, wallet),
        _ => {
            let mut r = page(
                405,
                "Method Not Allowed",
                "Method not allowed",
                "<p>Use GET to see an item and POST to buy it.</p>",
            );
            r.headers.push(("Allow".into(), "GET, HEAD, POST".into()));
            r
        }
    }
}

fn price(p: u64) -> String {
    format!("{p}")
}

fn show(req: &Request, config: &Config) -> Response {
    let Some(id) = &req.item else {
        let mut list = String::from("<ul>\n");
        for i in &config.items {
            list.push_str(&format!(
                "<li><a href=\"{}\">{}</a>: {}</li>\n",
                html_escape(&item_url(req, &i.id)),
                html_escape(&i.description),
                price(i.price)
            ));
        }
        list.push_str("</ul>");
        return page(200, "OK", &config.shop_name, &list);
    };
    let Some(item) = config.item(id) else {
        return page(404, "Not Found", "No such item", &format!("<p>There is no item {}.</p>", html_escape(id)));
    };
    let address_field = if config.allow_buyer_address {
        format!(
            "<p><label>Your wallet (host:port), if not {}:{}: <input name=\"wallet\" size=\"30\"></label></p>\n",
            html_escape(&req.remote_addr),
            config.wallet_port
        )
    } else {
        String::new()
    };
    let body = format!(
        "<p>{desc}</p>\n<p>Price: {price}</p>\n<form method=\"post\" action=\"{action}\">\n{address_field}<p><button type=\"submit\">Buy with payme</button></p>\n</form>\n<p>Your payme wallet will ask you to approve the payment.</p>",
        desc = html_escape(&item.description),
        price = price(item.price),
        action = html_escape(&item_url(req, &item.id)),
    );
    page(200, "OK", &item.description, &body)
}

/// A buyer-given wallet address must look like host:port (no spaces, no scheme).
fn valid_address(a: &str) -> bool {
    let Some((host, port)) = a.rsplit_once(':') else { return false };
    !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
        && port.parse::<u16>().map(|p| p > 0).unwrap_or(false)
}

fn buy(req: &Request, stdin: &mut dyn Read, config: &Config, wallet: &dyn Collector) -> Response {
    let Some(id) = &req.item else {
        return page(404, "Not Found", "No such item", "<p>Name an item to buy.</p>");
    };
    let Some(item) = config.item(id) else {
        return page(404, "Not Found", "No such item", &format!("<p>There is no item {}.</p>", html_escape(id)));
    };
    let len = req.content_length.unwrap_or(0);
    if len > MAX_FORM {
        return page(413, "Payload Too Large", "Form too large", "<p>The form is larger than this shop accepts.</p>");
    }
    let mut body = vec![0u8; len];
    if stdin.read_exact(&mut body).is_err() {
        return page(400, "Bad Request", "Incomplete form", "<p>The form did not arrive whole.</p>");
    }
    let form = parse_form(&String::from_utf8_lossy(&body));
    let given = form.get("wallet").map(|s| s.trim()).filter(|s| !s.is_empty());
    let buyer = match given {
        Some(a) if config.allow_buyer_address => {
            if !valid_address(a) {
                return page(
                    400,
                    "Bad Request",
                    "Bad wallet address",
                    "<p>Give your wallet's address as host:port.</p>",
                );
            }
            a.to_owned()
        }
        _ if req.remote_addr.contains(':') => format!("[{}]:{}", req.remote_addr, config.wallet_port),
        _ => format!("{}:{}", req.remote_addr, config.wallet_port),
    };
    match wallet.collect(&buyer, item.price, &item.description) {
        Outcome::Paid { payment } => match item.content() {
            Ok(bytes) => Response {
                status: 200,
                reason: "OK",
                headers: vec![
                    ("Content-Type".into(), item.content_type.clone()),
                    ("Cache-Control".into(), "no-store".into()),
                    ("X-Payme-Payment".into(), payment.to_string()),
                ],
                body: bytes,
            },
            Err(e) => {
                eprintln!("payme-cgi: paid (payment {payment}) but cannot read item {}: {e}", item.id);
                page(500, "Internal Server Error", "Paid, but the item is missing",
                    &format!("<p>Your payment (number {payment}) was received, but the item could not be read. The shop has been told; keep your receipt.</p>"))
            }
        },
        Outcome::Refused { label, reason } => {
            let why = match label.as_str() {
                "refused_by_user" => "You declined the payment.",
                "not_enough_money" => "Your wallet does not hold enough money for this.",
                "no_answer" => "Your wallet did not answer. Is payme-wallet running, and reachable from this shop?",
                "timeout" => "The payment did not complete in time.",
                "merchant_key_changed" => "Your wallet does not recognise this shop's key.",
                _ => "The payment was refused.",
            };
            page(
                402,
                "Payment Required",
                "Payment not made",
                &format!(
                    "<p>{}</p>\n<p>Details: {} ({})</p>\n<p><a href=\"{}\">Try again</a></p>",
                    html_escape(why),
                    html_escape(&reason),
                    html_escape(&label),
                    html_escape(&item_url(req, &item.id))
                ),
            )
        }
        Outcome::WalletDown(e) => {
            eprintln!("payme-cgi: {e}");
            page(
                503,
                "Service Unavailable",
                "The shop cannot take payments right now",
                "<p>The shop's wallet is not available. Please try again later.</p>",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A collector that records whom it was asked to collect from and answers `outcome`.
    struct Recorder {
        outcome: Outcome,
        asked: RefCell<Vec<(String, u64, String)>>,
    }

    impl Collector for Recorder {
        fn collect(&self, buyer: &str, amount: u64, description: &str) -> Outcome {
            self.asked.borrow_mut().push((buyer.into(), amount, description.into()));
            self.outcome.clone()
        }
    }

    fn config() -> Config {
        toml::from_str(
            r#"control_socket = "/nonexistent"
               shop_name = "Bob's <Books>"
               [[item]]
               id = "paper"
               price = 37
               description = "The <PayMe> paper"
               content_type = "application/pdf"
               body = "%PDF-bytes"
            "#,
        )
        .unwrap()
    }

    fn req(method: &str, path: &str) -> Request {
        let env: HashMap<String, String> = [
            ("REQUEST_METHOD", method),
            ("PATH_INFO", path),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("SCRIPT_NAME", "/cgi-bin/payme-cgi"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Request::from_env(&env)
    }

    fn paid() -> Recorder {
        Recorder { outcome: Outcome::Paid { payment: 9 }, asked: RefCell::new(vec![]) }
    }

    #[test]
    fn get_shows_a_confirm_form_and_never_collects() {
        let w = paid();
        let r = handle(&req("GET", "/paper"), &mut &b""[..], &config(), &w);
        assert_eq!(r.status, 200);
        assert!(r.headers.contains(&("Content-Type".into(), "text/html; charset=utf-8".into())));
        let html = String::from_utf8(r.body).unwrap();
        assert!(html.contains("<form method=\"post\" action=\"/cgi-bin/payme-cgi/paper\">"), "{html}");
        assert!(html.contains("The &lt;PayMe&gt; paper"), "escaped: {html}");
        assert!(w.asked.borrow().is_empty(), "GET never spends money");
        let list = handle(&req("GET", ""), &mut &b""[..], &config(), &w);
        assert!(String::from_utf8(list.body).unwrap().contains("Bob&#39;s &lt;Books&gt;"));
    }

    #[test]
    fn post_collects_from_remote_addr_or_the_given_wallet() {
        let w = paid();
        let r = handle(&req("POST", "/paper"), &mut &b""[..], &config(), &w);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"%PDF-bytes"[..]));
        assert!(r.headers.contains(&("Content-Type".into(), "application/pdf".into())));
        assert_eq!(w.asked.borrow()[0], ("192.0.2.7:8001".into(), 37, "The <PayMe> paper".into()));
        let mut rq = req("POST", "/paper");
        let form = b"wallet=10.1.2.3%3A9001&x=1";
        rq.content_length = Some(form.len());
        handle(&rq, &mut &form[..], &config(), &w);
        assert_eq!(w.asked.borrow()[1].0, "10.1.2.3:9001");
        let bad = b"wallet=http://evil/";
        rq.content_length = Some(bad.len());
        assert_eq!(handle(&rq, &mut &bad[..], &config(), &w).status, 400);
        rq.content_length = Some(MAX_FORM + 1);
        assert_eq!(handle(&rq, &mut &b""[..], &config(), &w).status, 413);
    }

    #[test]
    fn refusals_give_402_unknown_404_other_methods_405_head_no_body() {
        let refused = Recorder {
            outcome: Outcome::Refused { label: "not_enough_money".into(), reason: "holding 3 <need> 37".into() },
            asked: RefCell::new(vec![]),
        };
        let r = handle(&req("POST", "/paper"), &mut &b""[..], &config(), &refused);
        assert_eq!((r.status, r.reason), (402, "Payment Required"));
        let html = String::from_utf8(r.body).unwrap();
        assert!(html.contains("does not hold enough money") && html.contains("holding 3 &lt;need&gt; 37"), "{html}");
        let down = Recorder { outcome: Outcome::WalletDown("x".into()), asked: RefCell::new(vec![]) };
        assert_eq!(handle(&req("POST", "/paper"), &mut &b""[..], &config(), &down).status, 503);
        assert_eq!(handle(&req("GET", "/nope"), &mut &b""[..], &config(), &paid()).status, 404);
        assert_eq!(handle(&req("POST", "/nope"), &mut &b""[..], &config(), &paid()).status, 404);
        let r = handle(&req("DELETE", "/paper"), &mut &b""[..], &config(), &paid());
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("Allow".into(), "GET, HEAD, POST".into())));
        let head = handle(&req("HEAD", "/paper"), &mut &b""[..], &config(), &paid());
        let out = head.to_cgi(true);
        assert!(out.ends_with(b"\r\n\r\n"), "no body for HEAD");
        assert!(String::from_utf8_lossy(&out).contains(&format!("Content-Length: {}", head.body.len())));
    }

    #[test]
    fn form_decoding() {
        let f = parse_form("a=1+2%20%41&b=%zz&c");
        assert_eq!(f["a"], "1 2 A");
        assert_eq!(f["b"], "%zz");
        assert_eq!(f["c"], "");
        assert_eq!(parse_form("x=%4"), [("x".to_string(), "%4".to_string())].into_iter().collect());
    }

    #[test]
    fn form_decoding_at_the_end_of_the_input_and_of_utf8() {
        // A percent escape that ends the input is decoded too.
        assert_eq!(parse_form("item=%41")["item"], "A");
        assert_eq!(parse_form("wallet=caf%C3%A9&wallet=last")["wallet"], "last", "the last value counts");
        assert_eq!(parse_form("n=%FF")["n"], "\u{fffd}");
        assert_eq!(parse_form("a%3Db=c%26d")["a=b"], "c&d");
    }
}
