//! # payme-cgi
//!
//! A CGI/1.1 program (RFC 3875) that sells items from any web server: GET shows an item,
//! its order id and the shop key's fingerprint, and a confirm form (GET never spends
//! money: link prefetchers and scanners follow links); POST buys it by asking the
//! merchant's wallet to collect the price for that order from the buyer's wallet, found at
//! REMOTE_ADDR and the configured wallet port (or, when the shop allows it, another port
//! of REMOTE_ADDR that the buyer gives in the form). The item is printed with
//! `Status: 200` and its content type, or a page with `Status: 402 Payment Required` and
//! the reason in plain words. A request presenting the receipt of a paid order
//! (`?receipt=` or a `receipt` form field) gets the item again until the order expires:
//! a buyer charged after this program stopped waiting still gets what was paid for.
//!
//! **In band over HTTP 402** (docs/PMTP.md, "Paying over HTTP (in band)"): every item page
//! carries the merchant wallet's signed offer for its order in a `PAYMENT-REQUIRED` header.
//! A browser (a request whose `Accept` names `text/html`) gets the page with status 200 and
//! the form above; any other client gets it with `402 Payment Required`. A GET carrying
//! `PAYMENT-SIGNATURE` (a sealed payment) is settled by the wallet (control op `settle`)
//! and answered with the item and the receipt in `PAYMENT-RESPONSE`, or refused with
//! `PAYMENT-REFUSED: <code> <label>`; a GET carrying `PAYMENT-RECEIPT` re-opens the item
//! as `?receipt=` does. The shop's origin is `origin` in the config, else the CGI
//! variables (REQUEST_SCHEME or HTTPS, SERVER_NAME, SERVER_PORT), never the Host header.
//!
//! | status | when |
//! |---|---|
//! | 200 | the item's page; the item, paid or re-opened by its receipt |
//! | 400 | a form that did not arrive whole, a bad wallet port or address, a bad receipt, an unreadable payment header |
//! | 402 | not paid: refused, no money, unreachable, no approval in time, or not confirmed yet; an item asked for without payment by a client that is not a browser |
//! | 403 | a receipt that is not for this item's paid order |
//! | 409 | an in-band payment for an order already paid (or being paid) with other coins |
//! | 404 | no such item |
//! | 405 | a method other than GET, HEAD, POST |
//! | 410 | a receipt whose order has expired; an in-band payment for an expired offer |
//! | 413 | a form larger than [`MAX_FORM`] |
//! | 500 | paid, but the item cannot be read |
//! | 503 | the shop's wallet is not available, or did not confirm an in-band payment in time |
//!
//! [`handle`] does all of it from the CGI environment and standard input, so it is tested
//! without a web server; `main.rs` only reads the environment and writes the response.

#![forbid(unsafe_code)]

pub mod config;
pub mod order;
pub mod wallet;

use config::Config;
use order::OrderId;
use std::collections::HashMap;
use std::io::Read;
use wallet::{Claim, Collector, OfferAsk, Outcome, Purchase, Settle, Settlement};

/// Most bytes of a form accepted from a buyer.
pub const MAX_FORM: usize = 4096;

/// Most bytes of a request body read and thrown away before answering a request whose
/// body is not used (a web server may cut short a response whose request body was left
/// unread); beyond this the server's own limits apply.
pub const MAX_DISCARD: u64 = 1 << 20;

/// Longest receipt token accepted (hex of a signed receipt is about 500 digits).
pub const MAX_RECEIPT: usize = 4096;

/// Longest `PAYMENT-SIGNATURE` value passed to the wallet (pmtp-proto's `http::MAX_HEADER`).
pub const MAX_PAYMENT: usize = 48 * 1024;

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
    /// The `receipt` query parameter: a paid order's receipt, to get its item again.
    pub receipt: Option<String>,
    pub remote_addr: String,
    pub script_name: String,
    pub content_type: String,
    pub content_length: Option<usize>,
    /// The `PAYMENT-SIGNATURE` request header (HTTP_PAYMENT_SIGNATURE): an in-band payment.
    pub payment_signature: Option<String>,
    /// The `PAYMENT-RECEIPT` request header (HTTP_PAYMENT_RECEIPT): a receipt re-opening the item.
    pub payment_receipt: Option<String>,
    /// Whether the client takes HTML pages (its `Accept` names `text/html`): a browser,
    /// which gets the item page with status 200 rather than 402.
    pub browser: bool,
    /// The shop's origin from the CGI variables (REQUEST_SCHEME or HTTPS, SERVER_NAME,
    /// SERVER_PORT), when they are all there; `origin` in the config overrides it.
    pub server_origin: Option<String>,
    /// The requested path and query: REQUEST_URI, else SCRIPT_NAME, PATH_INFO and
    /// QUERY_STRING.
    pub resource: String,
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
            receipt: query.get("receipt").cloned().filter(|r| !r.is_empty()),
            remote_addr: get("REMOTE_ADDR"),
            script_name: get("SCRIPT_NAME"),
            content_type: get("CONTENT_TYPE"),
            content_length: env.get("CONTENT_LENGTH").and_then(|v| v.trim().parse().ok()),
            payment_signature: env.get("HTTP_PAYMENT_SIGNATURE").map(|v| v.trim().to_owned()),
            payment_receipt: env.get("HTTP_PAYMENT_RECEIPT").map(|v| v.trim().to_owned()),
            browser: get("HTTP_ACCEPT").to_ascii_lowercase().contains("text/html"),
            server_origin: server_origin(env),
            resource: match env.get("REQUEST_URI").filter(|u| !u.is_empty()) {
                Some(uri) => uri.clone(),
                None => {
                    let q = get("QUERY_STRING");
                    let q = if q.is_empty() { q } else { format!("?{q}") };
                    format!("{}{}{q}", get("SCRIPT_NAME"), get("PATH_INFO"))
                }
            },
        }
    }
}

/// The origin the web server says it serves: scheme from REQUEST_SCHEME (or HTTPS=on),
/// host from SERVER_NAME, port from SERVER_PORT. `None` when SERVER_NAME or SERVER_PORT
/// is missing or malformed.
fn server_origin(env: &HashMap<String, String>) -> Option<String> {
    let scheme = match env.get("REQUEST_SCHEME").map(|s| s.to_ascii_lowercase()) {
        Some(s) if s == "http" || s == "https" => s,
        _ if env.get("HTTPS").is_some_and(|v| v.eq_ignore_ascii_case("on") || v == "1") => "https".into(),
        _ => "http".into(),
    };
    let name = env.get("SERVER_NAME")?.trim().to_ascii_lowercase();
    let port: u16 = env.get("SERVER_PORT")?.trim().parse().ok()?;
    let host = if name.contains(':') && !name.starts_with('[') { format!("[{name}]") } else { name };
    origin_of_url(&format!("{scheme}://{host}:{port}"))
}

/// `scheme://host[:port]` of an http or https URL, lower-case, or `None` for anything
/// else (credentials in the URL, an empty host, characters no host has). The wallet
/// normalises it again (pmtp-proto's `Origin`).
pub fn origin_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("").to_ascii_lowercase();
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':');
    if authority.is_empty() || authority.starts_with(':') || !authority.chars().all(ok) {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

/// The shop's origin: the configured one, else the web server's.
fn shop_origin(req: &Request, config: &Config) -> Option<String> {
    config.origin.as_deref().and_then(origin_of_url).or_else(|| req.server_origin.clone())
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

/// Writes one line to the web server's error log (the shop's log), with every control
/// character escaped: the text may quote a buyer's wallet, a form, or the OS.
pub fn log(line: &str) {
    let escaped: String =
        line.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect();
    eprintln!("payme-cgi: {escaped}");
}

/// The look of every page: one readable column, on a phone too.
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40em;margin:0 auto;padding:1em;line-height:1.45;color:#1b1b1b}\
.price{font-size:1.5em;font-weight:bold}.order,.fingerprint{font-family:monospace;word-break:break-all}\
button,.pay{display:inline-block;font-size:1.05em;padding:.5em 1.2em;border-radius:4px;border:1px solid #555;background:#20394f;color:#fff;text-decoration:none}\
button:disabled{background:#888}.receipt{border:1px solid #ccc;border-radius:6px;padding:.5em 1em}\
.countdown{font-weight:bold}input{font-size:1em}";

fn page(status: u16, reason: &'static str, title: &str, body_html: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head>\n<body>\n<h1>{t}</h1>\n{body_html}\n</body></html>\n",
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

/// The way back to an item's page, for every page that did not deliver it.
fn back_to(action: &str, what: &str) -> String {
    format!("<p><a href=\"{}\">{}</a></p>", html_escape(action), html_escape(what))
}

fn item_url(req: &Request, id: &str) -> String {
    format!("{}/{}", req.script_name.trim_end_matches('/'), id)
}

fn no_item(id: &str) -> Response {
    page(404, "Not Found", "No such item", &format!("<p>There is no item {}.</p>", html_escape(id)))
}

fn wallet_down(what: &str) -> Response {
    log(what);
    page(
        503,
        "Service Unavailable",
        "The shop cannot take payments right now",
        "<p>The shop's wallet is not available. Please try again later.</p>",
    )
}

/// The request body: read whole when it is small enough to be a form, otherwise read and
/// thrown away up to [`MAX_DISCARD`] bytes. Either way the web server has delivered the
/// body before the answer goes out, so the answer is never cut short.
enum Body {
    Form(Vec<u8>),
    TooLarge,
    Incomplete,
}

fn read_body(req: &Request, stdin: &mut dyn Read) -> Body {
    let Some(len) = req.content_length.filter(|l| *l > 0) else { return Body::Form(Vec::new()) };
    if len > MAX_FORM {
        let _ = std::io::copy(&mut stdin.take(MAX_DISCARD.min(len as u64)), &mut std::io::sink());
        return Body::TooLarge;
    }
    let mut body = vec![0u8; len];
    match stdin.read_exact(&mut body) {
        Ok(()) => Body::Form(body),
        Err(_) => Body::Incomplete,
    }
}

/// Handles one CGI request. The body (CONTENT_LENGTH bytes of `stdin`) is read before
/// anything is answered, whatever the method: at most [`MAX_FORM`] bytes are kept, and
/// at most [`MAX_DISCARD`] are read.
pub fn handle(req: &Request, stdin: &mut dyn Read, config: &Config, wallet: &dyn Collector) -> Response {
    let body = read_body(req, stdin);
    match req.method.as_str() {
        "GET" | "HEAD" => {
            let receipt = req.payment_receipt.as_ref().or(req.receipt.as_ref());
            match (&req.item, &req.payment_signature, receipt) {
                // Money moves on GET only: HEAD is answered as if unpaid.
                (Some(id), Some(payment), _) if req.method == "GET" => settle(req, id, payment, config, wallet),
                (Some(id), _, Some(receipt)) => claim(req, id, receipt, config, wallet),
                _ => show(req, config, wallet),
            }
        }
        "POST" => {
            let Some(id) = &req.item else {
                return page(404, "Not Found", "No such item", "<p>Name an item to buy.</p>");
            };
            let Some(item) = config.item(id) else { return no_item(id) };
            let form = match body {
                Body::Form(b) => parse_form(&String::from_utf8_lossy(&b)),
                Body::TooLarge => {
                    return page(
                        413,
                        "Payload Too Large",
                        "Form too large",
                        "<p>The form is larger than this shop accepts.</p>",
                    )
                }
                Body::Incomplete => {
                    return page(400, "Bad Request", "Incomplete form", "<p>The form did not arrive whole.</p>")
                }
            };
            match form.get("receipt").filter(|r| !r.is_empty()) {
                Some(receipt) => claim(req, id, receipt, config, wallet),
                None => buy(req, item, &form, config, wallet),
            }
        }
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

/// The form that takes a receipt back: for a buyer whose page gave up before their
/// wallet paid, or who lost the item.
fn receipt_form(action: &str) -> String {
    format!(
        "<form method=\"get\" action=\"{}\">\n<p><label>Receipt: <input name=\"receipt\" size=\"40\"></label> <button type=\"submit\">Get the item</button></p>\n</form>",
        html_escape(action)
    )
}

fn show(req: &Request, config: &Config, wallet: &dyn Collector) -> Response {
    let Some(id) = &req.item else {
        let mut list = String::from("<ul>\n");
        for i in &config.items {
            list.push_str(&format!(
                "<li><a href=\"{}\">{}</a>: {}</li>\n",
                html_escape(&item_url(req, &i.id)),
                html_escape(&i.description),
                html_escape(&config.price(i.price))
            ));
        }
        list.push_str("</ul>");
        return page(200, "OK", &config.shop_name, &list);
    };
    let Some(item) = config.item(id) else { return no_item(id) };
    let shop = match wallet.identity() {
        Ok(s) => s,
        Err(e) => return wallet_down(&e),
    };
    let order = match OrderId::draw() {
        Ok(o) => o,
        Err(e) => return wallet_down(&format!("cannot draw an order id: {e}")),
    };
    let address_field = if config.allow_buyer_address {
        format!(
            "<p><label>Your wallet's port, if not {}: <input name=\"wallet\" size=\"6\" inputmode=\"numeric\"></label></p>\n",
            config.wallet_port
        )
    } else {
        String::new()
    };
    // The in-band offer for the same order. A browser still gets its page when the
    // origin is unknown; any other client needs the offer.
    let origin = shop_origin(req, config);
    let offer = match &origin {
        Some(origin) => {
            let ask = OfferAsk {
                origin: origin.clone(),
                resource: req.resource.clone(),
                amount: item.price,
                description: item.description.clone(),
                order,
            };
            match wallet.offer(&ask) {
                Ok(o) if is_header_token(&o) => Some(o),
                Ok(_) => return wallet_down("the wallet's offer is not a header value"),
                // The page flow does not need the offer: a browser still gets its form.
                Err(e) if req.browser => {
                    log(&format!("no in-band offer for item {}: {e}", item.id));
                    None
                }
                Err(e) => return wallet_down(&e),
            }
        }
        None if req.browser => None,
        None => return no_origin(),
    };
    let action = item_url(req, &item.id);
    let url = origin.as_ref().map(|o| format!("{o}{}", req.resource));
    let pay_line = match &url {
        Some(u) => format!("<p>Or pay from a shell: <code>payme-wallet pay {}</code></p>\n", html_escape(u)),
        None => String::new(),
    };
    // In band from the browser: the buyer's wallet window shows this offer, and once the
    // buyer approves there, their wallet pays the shop itself and comes back here.
    let pay_link = match (&url, &offer) {
        (Some(u), Some(o)) if !config.wallet_ui.is_empty() => format!(
            "<p><a class=\"pay\" id=\"pay-with-payme\" href=\"{}\">Pay with payme</a></p>\n\
             <p>Opens your payme wallet's window to approve; your wallet pays the shop itself and brings you back to the item.</p>\n\
             <p>Or let the shop ask your wallet (it must accept connections from this shop):</p>\n",
            html_escape(&wallet_pay_link(&config.wallet_ui, u, o))
        ),
        _ => String::new(),
    };
    let body = format!(
        "<p>{desc}</p>\n<p>Price: <span class=\"price\">{price}</span></p>\n\
         <p>Order <strong class=\"order\">{short}</strong>, from {shop_name} (key fingerprint <code class=\"fingerprint\">{fp}</code>).</p>\n\
         {pay_link}<form class=\"buy\" method=\"post\" action=\"{action}\">\n<input type=\"hidden\" name=\"order\" value=\"{order}\">\n\
         {address_field}<p><button type=\"submit\" id=\"buy\">Buy with payme</button></p>\n\
         <p class=\"countdown\" id=\"waiting\" hidden></p>\n</form>\n\
         <p>Your payme wallet will ask you to approve the payment: check that it names order {short} and this shop's address.</p>\n\
         {pay_line}<p>Paid already? Your receipt (<code>payme-wallet receipt ID</code>) gets the item again:</p>\n{claim}\n{waiting}",
        desc = html_escape(&item.description),
        price = html_escape(&config.price(item.price)),
        short = html_escape(&order.short()),
        shop_name = html_escape(&shop.name),
        fp = html_escape(&shop.fingerprint),
        action = html_escape(&action),
        order = html_escape(&order.hex()),
        claim = receipt_form(&action),
        waiting = waiting_script(config.timeout_secs),
    );
    let mut r = if req.browser {
        page(200, "OK", &item.description, &body)
    } else {
        page(402, "Payment Required", &item.description, &body)
    };
    if let Some(o) = offer {
        r.headers.push((PAYMENT_REQUIRED.into(), o));
    }
    r
}

/// The buyer's wallet window's pay page for `url` and its `offer` (`PAYMENT-REQUIRED`).
pub fn wallet_pay_link(wallet_ui: &str, url: &str, offer: &str) -> String {
    let query =
        form_urlencoded::Serializer::new(String::new()).append_pair("url", url).append_pair("offer", offer).finish();
    format!("{}/pay?{query}", wallet_ui.trim_end_matches('/'))
}

/// While the shop asks the buyer's wallet (the POST is answered only once the wallet has
/// paid or refused), the Buy button is disabled and a countdown shows the time left.
/// Without JavaScript the page works the same, with the browser's own loading sign.
fn waiting_script(secs: u64) -> String {
    format!(
        "<script>\n(function () {{\n  var form = document.querySelector('form.buy');\n  if (!form) return;\n  \
         form.addEventListener('submit', function () {{\n    var button = document.getElementById('buy');\n    \
         var out = document.getElementById('waiting');\n    button.disabled = true;\n    button.textContent = 'Waiting for your wallet';\n    \
         out.hidden = false;\n    var left = {secs};\n    (function tick() {{\n      \
         out.textContent = 'Approve the payment in your payme wallet: ' + left + ' s left.';\n      \
         if (left-- > 0) setTimeout(tick, 1000);\n    }})();\n  }});\n}})();\n</script>"
    )
}

/// Response header of a 402: the merchant's signed offer (as pmtp-proto's `http`).
pub const PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
/// Response header of a paid answer: the merchant's signed receipt.
pub const PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
/// Response header of a refused in-band payment: `<reason code> <label>`.
pub const PAYMENT_REFUSED: &str = "PAYMENT-REFUSED";

/// Whether `s` can go in a header as it is: a `v1.` value (base64url) and nothing else.
fn is_header_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn no_origin() -> Response {
    log("the shop's origin is unknown: set origin in the configuration (or the server's SERVER_NAME and SERVER_PORT)");
    page(
        500,
        "Internal Server Error",
        "The shop cannot take payments here",
        "<p>This shop is not configured for payments over HTTP. Please try again later.</p>",
    )
}

/// The HTTP status of an in-band refusal, from its pmtp-proto reason code.
fn refusal_status(code: u16) -> (u16, &'static str) {
    match code {
        1 | 5 => (400, "Bad Request"),           // malformed, decrypt_failed
        46 => (409, "Conflict"),                 // unexpected_payment: paid with other coins
        12 => (410, "Gone"),                     // nonce_outside_window: the offer expired
        50 | 13 => (503, "Service Unavailable"), // peer_bank_unavailable, busy: send it again
        _ => (402, "Payment Required"),
    }
}

/// What an in-band refusal means, in plain words.
fn settle_refusal_text(code: u16) -> &'static str {
    match code {
        1 | 5 => "The payment in your request could not be read. Nothing was charged.",
        46 => "This order is already paid, or being paid, with other coins. Your coins were not taken: your wallet keeps them. If you paid, your receipt gets the item.",
        12 => "The offer you paid has expired. Nothing was charged; ask for the page again for a new offer.",
        50 | 13 => "Your payment is being confirmed at the bank. Send the same payment again in a moment (your wallet does this); you will not be charged twice.",
        6 => "The payment answers an offer this shop did not make. Nothing was charged.",
        7 => "The payment is for another page or shop. Nothing was charged.",
        45 => "The payment is not for this item's price. Nothing was charged.",
        30 => "The bank says some of your coins are no longer in circulation. Nothing was charged.",
        _ => "The payment was not accepted. Nothing was charged.",
    }
}

/// Settles an in-band payment for item `id` (the `PAYMENT-SIGNATURE` header's value).
fn settle(req: &Request, id: &str, payment: &str, config: &Config, wallet: &dyn Collector) -> Response {
    let Some(item) = config.item(id) else { return no_item(id) };
    let refused = |code: u16, label: &str| {
        let (status, reason) = refusal_status(code);
        let back = back_to(&item_url(req, &item.id), "Back to the item");
        let mut r = page(
            status,
            reason,
            "Payment not accepted",
            &format!("<p>{}</p>\n{back}", html_escape(settle_refusal_text(code))),
        );
        let plain =
            !label.is_empty() && label.len() <= 40 && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        let label = if plain { label } else { "refused" };
        r.headers.push((PAYMENT_REFUSED.into(), format!("{code} {label}")));
        if status == 503 {
            r.headers.push(("Retry-After".into(), "2".into()));
        }
        r
    };
    if payment.len() > MAX_PAYMENT || !is_header_token(payment) {
        log(&format!("item {}: an unreadable PAYMENT-SIGNATURE header ({} bytes)", item.id, payment.len()));
        return refused(1, "malformed");
    }
    let Some(origin) = shop_origin(req, config) else { return no_origin() };
    let s = Settle {
        payment: payment.to_owned(),
        origin,
        resource: req.resource.clone(),
        item: item.id.clone(),
        price: item.price,
    };
    match wallet.settle(&s) {
        Settlement::Paid { receipt, order, payment } => {
            let Some(order) = OrderId::parse(&order) else { return wallet_down("the wallet named a bad order id") };
            if !is_header_token(&receipt) {
                return wallet_down("the wallet's receipt is not a header value");
            }
            let mut r = deliver(item, order, Some(payment));
            // Sent even if the item cannot be read: the receipt gets it once it is back.
            r.headers.push((PAYMENT_RESPONSE.into(), receipt));
            r
        }
        Settlement::Refused { code, label, reason } => {
            log(&format!("item {}: in-band payment refused: {code} {label}: {reason}", item.id));
            refused(code, &label)
        }
        Settlement::GaveUp => {
            log(&format!("item {}: in-band payment not confirmed within {} s", item.id, config.timeout_secs));
            refused(50, "peer_bank_unavailable")
        }
        Settlement::WalletDown(e) => wallet_down(&e),
    }
}

/// The buyer's wallet: REMOTE_ADDR at the configured port, or, when the shop allows it, at
/// a port the buyer gives (alone, or as REMOTE_ADDR:port). Any other host is refused: the
/// shop's wallet must not be made to connect wherever a visitor says.
fn buyer_address(req: &Request, form: &HashMap<String, String>, config: &Config) -> Result<String, Response> {
    let at = |port: u16| {
        if req.remote_addr.contains(':') {
            format!("[{}]:{port}", req.remote_addr)
        } else {
            format!("{}:{port}", req.remote_addr)
        }
    };
    let given = form.get("wallet").map(|s| s.trim()).filter(|s| !s.is_empty());
    let Some(given) = given.filter(|_| config.allow_buyer_address) else { return Ok(at(config.wallet_port)) };
    let (host, port) = match given.rsplit_once(':') {
        Some((h, p)) => (Some(h.trim_start_matches('[').trim_end_matches(']')), p),
        None => (None, given),
    };
    let port = port.parse::<u16>().ok().filter(|p| *p > 0);
    match (host, port) {
        (None, Some(p)) => Ok(at(p)),
        (Some(h), Some(p)) if h == req.remote_addr => Ok(at(p)),
        _ => {
            log(&format!("wallet field refused from {}: {given:?}", req.remote_addr));
            Err(page(
                400,
                "Bad Request",
                "Bad wallet port",
                &format!(
                    "<p>The shop pays only from a wallet on the computer you are browsing from ({}). Give just its port, a number from 1 to 65535.</p>",
                    html_escape(&req.remote_addr)
                ),
            ))
        }
    }
}

/// What a refusal means for the buyer, in plain words. Details (which may quote the
/// buyer's wallet or the OS) go to the shop's log only.
fn refusal_text(label: &str, buyer: &str) -> String {
    match label {
        "refused_by_user" => "You declined the payment in your wallet. Nothing was charged.".into(),
        "not_enough_money" => {
            "Your wallet does not hold enough money in coins this shop accepts. Nothing was charged.".into()
        }
        "no_answer" => format!(
            "The shop could not reach your payme wallet at {buyer}. Check that payme-wallet serve is running on the computer you are browsing from and that it accepts connections from this shop. Nothing was charged."
        ),
        "timeout" => "Your wallet asked you to approve the payment, but no answer came in time. Nothing was charged.".into(),
        "busy" => "The shop or your wallet is handling too many payments right now. Please try again in a minute. Nothing was charged.".into(),
        "merchant_key_changed" => "Your wallet remembers a different key for this shop, so it did not pay. Nothing was charged.".into(),
        "unknown_merchant" => "Your wallet pays only shops it already knows. Nothing was charged.".into(),
        "unexpected_payment" => "This order is already paid, or being paid for something else. If you paid, your receipt gets the item (below); otherwise open the item again for a new order.".into(),
        "nonce_replay" => "Your wallet was already asked to pay this order. Open the item again for a new order. Nothing was charged.".into(),
        "peer_bank_unavailable" => "The shop's bank has not confirmed your payment yet. If it does, your wallet will hold a receipt that gets you the item (below).".into(),
        _ => "The payment was not made.".into(),
    }
}

fn buy(
    req: &Request,
    item: &config::Item,
    form: &HashMap<String, String>,
    config: &Config,
    wallet: &dyn Collector,
) -> Response {
    let buyer = match buyer_address(req, form, config) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // The order drawn with the page; a POST from elsewhere (a script) gets a fresh one.
    let order = match form.get("order").map(|o| OrderId::parse(o)) {
        Some(Some(o)) => o,
        Some(None) => {
            return page(400, "Bad Request", "Bad order", "<p>The form's order id is damaged. Open the item again.</p>")
        }
        None => match OrderId::draw() {
            Ok(o) => o,
            Err(e) => return wallet_down(&format!("cannot draw an order id: {e}")),
        },
    };
    let purchase = Purchase {
        buyer: buyer.clone(),
        amount: item.price,
        description: item.description.clone(),
        item: item.id.clone(),
        order,
    };
    let action = item_url(req, &item.id);
    let order_line = format!("<p>Order <strong class=\"order\">{}</strong>.</p>", html_escape(&order.short()));
    match wallet.collect(&purchase) {
        // A browser gets the receipt and a link to the item (which the receipt re-opens
        // until the order expires); a program gets the item itself.
        Outcome::Paid { payment, receipt } if req.browser && is_header_token(&receipt) && item.readable() => {
            delivered(item, order, payment, &receipt, &action, config)
        }
        Outcome::Paid { payment, .. } => deliver(item, order, Some(payment)),
        Outcome::Refused { label, reason } => {
            log(&format!("order {} from {buyer}: not paid: {label}: {reason}", order.short()));
            page(
                402,
                "Payment Required",
                "Payment not made",
                &format!(
                    "{order_line}\n<p>{}</p>\n<p><a href=\"{}\">Try again</a></p>\n{}",
                    html_escape(&refusal_text(&label, &buyer)),
                    html_escape(&action),
                    receipt_form(&action)
                ),
            )
        }
        Outcome::GaveUp => {
            log(&format!("order {} from {buyer}: stopped waiting after {} s", order.short(), config.timeout_secs));
            page(
                402,
                "Payment Required",
                "Payment not confirmed yet",
                &format!(
                    "{order_line}\n<p>Your wallet has not paid yet, and this page stopped waiting. If your wallet still pays order {short} (you approve it late, or it completes), its receipt gets you the item until the order expires: run <code>payme-wallet history</code> to find the payment for order {short}, then <code>payme-wallet receipt ID</code>, and paste the receipt here:</p>\n{}\n{}",
                    receipt_form(&action),
                    back_to(&action, "Back to the item"),
                    short = html_escape(&order.short()),
                ),
            )
        }
        Outcome::WalletDown(e) => wallet_down(&e),
    }
}

/// The page a browser gets once it has paid: the receipt, and the link that opens the item
/// (its address with the receipt, good until the order expires).
fn delivered(
    item: &config::Item,
    order: OrderId,
    payment: i64,
    receipt: &str,
    action: &str,
    config: &Config,
) -> Response {
    let sep = if action.contains('?') { '&' } else { '?' };
    let open = format!("{action}{sep}receipt={receipt}");
    let mut r = page(
        200,
        "OK",
        "Paid: thank you",
        &format!(
            "<p>{desc}</p>\n<p><a class=\"pay\" id=\"open-item\" href=\"{open}\">Open the item</a></p>\n\
             <div class=\"receipt\"><h2>Receipt</h2>\n<p>Payment number <strong id=\"payment\">{payment}</strong><br>\n\
             Amount <strong class=\"price\">{price}</strong><br>\nOrder <strong class=\"order\">{short}</strong><br>\n\
             From {shop}</p></div>\n\
             <p>Keep this page's link to the item: it opens the item again until the order expires. Your wallet keeps the receipt too (<code>payme-wallet history</code>).</p>",
            desc = html_escape(&item.description),
            open = html_escape(&open),
            price = html_escape(&config.price(item.price)),
            short = html_escape(&order.short()),
            shop = html_escape(&config.shop_name),
        ),
    );
    r.headers.push(("X-Payme-Order".into(), order.hex()));
    r.headers.push(("X-Payme-Payment".into(), payment.to_string()));
    r
}

/// The item's bytes, paid now (`payment`) or re-opened by a receipt.
fn deliver(item: &config::Item, order: OrderId, payment: Option<i64>) -> Response {
    match item.content() {
        Ok(bytes) => {
            let mut headers = vec![
                ("Content-Type".into(), item.content_type.clone()),
                ("Cache-Control".into(), "no-store".into()),
                ("X-Payme-Order".into(), order.hex()),
            ];
            if let Some(p) = payment {
                headers.push(("X-Payme-Payment".into(), p.to_string()));
            }
            Response { status: 200, reason: "OK", headers, body: bytes }
        }
        Err(e) => {
            log(&format!("order {} paid but item {} cannot be read: {e}", order.short(), item.id));
            page(
                500,
                "Internal Server Error",
                "Paid, but the item is missing",
                &format!(
                    "<p>Your payment for order {} was received, but the item could not be read. The shop has been told; keep your receipt, which gets the item once it is back.</p>",
                    html_escape(&order.short())
                ),
            )
        }
    }
}

/// Serves item `id` again to a request presenting the receipt of its paid order.
fn claim(req: &Request, id: &str, receipt: &str, config: &Config, wallet: &dyn Collector) -> Response {
    let Some(item) = config.item(id) else { return no_item(id) };
    let receipt = receipt.trim();
    if receipt.len() > MAX_RECEIPT || !is_header_token(receipt) {
        return page(
            400,
            "Bad Request",
            "Bad receipt",
            "<p>A receipt is the long hexadecimal text <code>payme-wallet receipt ID</code> prints.</p>",
        );
    }
    let not_this = || {
        page(
            403,
            "Forbidden",
            "Receipt not accepted",
            &format!(
                "<p>This receipt is not for a paid order of {}. <a href=\"{}\">Buy it</a>.</p>",
                html_escape(&item.description),
                html_escape(&item_url(req, &item.id))
            ),
        )
    };
    match wallet.claim(receipt) {
        Claim::Order { item: paid_for, order, expired } => {
            let Some(order) = OrderId::parse(&order) else { return wallet_down("the wallet named a bad order id") };
            if paid_for != item.id {
                log(&format!("receipt for order {} (item {paid_for}) presented for item {}", order.short(), item.id));
                return not_this();
            }
            if expired {
                return page(
                    410,
                    "Gone",
                    "Order expired",
                    &format!(
                        "<p>Order {} has expired: its receipt no longer opens the item.</p>",
                        html_escape(&order.short())
                    ),
                );
            }
            deliver(item, order, None)
        }
        Claim::Unknown => not_this(),
        Claim::WalletDown(e) => wallet_down(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use wallet::Shop;

    /// A wallet double: records what it was asked to collect and answers `outcome`;
    /// `claim` answers `claimed`.
    struct Recorder {
        outcome: Outcome,
        claimed: Claim,
        asked: RefCell<Vec<Purchase>>,
        down: bool,
        settlement: Settlement,
        settles: RefCell<Vec<Settle>>,
        claims: RefCell<Vec<String>>,
    }

    impl Collector for Recorder {
        fn collect(&self, p: &Purchase) -> Outcome {
            self.asked.borrow_mut().push(p.clone());
            self.outcome.clone()
        }
        fn identity(&self) -> Result<Shop, String> {
            if self.down {
                return Err("socket gone".into());
            }
            Ok(Shop { name: "Bob's <Books>".into(), fingerprint: "SHA256:ab<cd>".into() })
        }
        fn claim(&self, receipt: &str) -> Claim {
            self.claims.borrow_mut().push(receipt.to_owned());
            self.claimed.clone()
        }
        /// A real offer, signed with a test key, from what the shop asked.
        fn offer(&self, ask: &OfferAsk) -> Result<String, String> {
            use pmtp_proto::text::{BoundedString, Description};
            if self.down {
                return Err("socket gone".into());
            }
            let id = pmtp_proto::testing::named_identity(2, "bobs-books");
            let body = pmtp_proto::http::Offer {
                order: ask.order.0,
                origin: pmtp_proto::http::Origin::of_url(&ask.origin).map_err(|e| e.to_string())?,
                resource: BoundedString::new(ask.resource.clone()).map_err(|e| e.to_string())?,
                amount: pmtp_proto::Amount::new(ask.amount),
                merchant: id.public(),
                description: Description::new(ask.description.clone()).map_err(|e| e.to_string())?,
                accepted_banks: vec![],
                expires: 2_000_000_000,
            };
            let signed = pmtp_proto::Signed::sign(body, &id.signing).map_err(|e| e.to_string())?;
            pmtp_proto::http::encode(&signed).map_err(|e| e.to_string())
        }
        fn settle(&self, s: &Settle) -> Settlement {
            self.settles.borrow_mut().push(s.clone());
            self.settlement.clone()
        }
    }

    fn with(outcome: Outcome) -> Recorder {
        Recorder {
            outcome,
            claimed: Claim::Unknown,
            asked: RefCell::new(vec![]),
            down: false,
            settlement: Settlement::WalletDown("no settle expected".into()),
            settles: RefCell::new(vec![]),
            claims: RefCell::new(vec![]),
        }
    }

    fn paid() -> Recorder {
        with(Outcome::Paid { payment: 9, receipt: "ab12".into() })
    }

    fn config_with(extra: &str) -> Config {
        toml::from_str(&format!(
            r#"control_socket = "/nonexistent"
               shop_name = "Bob's <Books>"
               {extra}
               [[item]]
               id = "paper"
               price = 37
               description = "The <PayMe> paper"
               content_type = "application/pdf"
               body = "%PDF-bytes"
               [[item]]
               id = "lost"
               price = 5
               description = "A lost file"
               content_type = "text/plain"
               file = "/nonexistent/lost"
            "#
        ))
        .unwrap()
    }

    fn config() -> Config {
        config_with("")
    }

    fn req(method: &str, path: &str) -> Request {
        let env: HashMap<String, String> = [
            ("REQUEST_METHOD", method),
            ("PATH_INFO", path),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("SCRIPT_NAME", "/cgi-bin/payme-cgi"),
            // The page flow's tests are a browser's.
            ("HTTP_ACCEPT", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ("SERVER_NAME", "shop.example"),
            ("SERVER_PORT", "8080"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Request::from_env(&env)
    }

    /// A request as a program (not a browser) sends it, with `headers` as CGI variables.
    fn inband(path: &str, query: &str, headers: &[(&str, &str)]) -> Request {
        let mut env: HashMap<String, String> = [
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", path),
            ("QUERY_STRING", query),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("SCRIPT_NAME", "/cgi-bin/payme-cgi"),
            ("HTTP_ACCEPT", "*/*"),
            ("SERVER_NAME", "Shop.Example"),
            ("SERVER_PORT", "8080"),
            ("HTTP_HOST", "evil.example"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in headers {
            env.insert(k.to_string(), v.to_string());
        }
        Request::from_env(&env)
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn offer_of(r: &Response) -> pmtp_proto::http::SignedOffer {
        pmtp_proto::http::decode(header(r, PAYMENT_REQUIRED).expect("a PAYMENT-REQUIRED header")).unwrap()
    }

    #[test]
    fn a_program_asking_for_an_item_gets_402_with_the_signed_offer_for_the_pages_order() {
        let w = paid();
        let r = handle(&inband("/paper", "ed=2", &[]), &mut &b""[..], &config(), &w);
        assert_eq!((r.status, r.reason), (402, "Payment Required"));
        assert_eq!(header(&r, "Cache-Control"), Some("no-store"));
        let offer = offer_of(&r);
        // The origin is the server's (SERVER_NAME, SERVER_PORT), never the Host header.
        assert_eq!(offer.body.origin.as_str(), "http://shop.example:8080");
        assert_eq!(offer.body.resource.as_str(), "/cgi-bin/payme-cgi/paper?ed=2");
        assert_eq!(offer.body.amount, pmtp_proto::Amount::new(37));
        let page = html(&r);
        assert!(page.contains(&format!("value=\"{}\"", hex_of(&offer.body.order))), "the form's order is the offer's");
        assert!(page.contains("payme-wallet pay http://shop.example:8080/cgi-bin/payme-cgi/paper?ed=2"), "{page}");
        assert!(w.asked.borrow().is_empty() && w.settles.borrow().is_empty(), "asking costs nothing");
        // A browser gets the same page and offer with 200.
        let b = handle(&req("GET", "/paper"), &mut &b""[..], &config(), &w);
        assert_eq!(b.status, 200);
        assert!(header(&b, PAYMENT_REQUIRED).is_some());
        // REQUEST_URI, when the server gives it, is the resource; HTTPS=on makes it https.
        let rq = inband(
            "/paper",
            "",
            &[("REQUEST_URI", "/cgi-bin/payme-cgi/paper"), ("HTTPS", "on"), ("SERVER_PORT", "443")],
        );
        let o = offer_of(&handle(&rq, &mut &b""[..], &config(), &w));
        assert_eq!(
            (o.body.origin.as_str(), o.body.resource.as_str()),
            ("https://shop.example:443", "/cgi-bin/payme-cgi/paper")
        );
        // The configured origin wins over the server's.
        let c = config_with("origin = \"https://Books.Example\"");
        let o = offer_of(&handle(&inband("/paper", "", &[]), &mut &b""[..], &c, &w));
        assert_eq!(o.body.origin.as_str(), "https://books.example:443");
    }

    #[test]
    fn without_a_known_origin_programs_get_500_and_browsers_the_page() {
        let w = paid();
        let mut rq = inband("/paper", "", &[]);
        rq.server_origin = None;
        assert_eq!(handle(&rq, &mut &b""[..], &config(), &w).status, 500);
        rq.browser = true;
        let r = handle(&rq, &mut &b""[..], &config(), &w);
        assert_eq!(r.status, 200);
        assert!(header(&r, PAYMENT_REQUIRED).is_none());
        assert!(config_with("origin = \"ftp://x\"").origin.is_some(), "parsed; refused by Config::load");
        assert_eq!(origin_of_url("ftp://x"), None);
        assert_eq!(origin_of_url("http://user@x/"), None);
        // A wallet that cannot offer (no account to deposit into): the page, not an offer.
        let w = NoOffer(paid());
        let mut rq = inband("/paper", "", &[]);
        assert_eq!(handle(&rq, &mut &b""[..], &config(), &w).status, 503);
        rq.browser = true;
        let r = handle(&rq, &mut &b""[..], &config(), &w);
        assert_eq!((r.status, header(&r, PAYMENT_REQUIRED)), (200, None));
    }

    /// A wallet that answers everything but offers.
    struct NoOffer(Recorder);

    impl Collector for NoOffer {
        fn collect(&self, p: &Purchase) -> Outcome {
            self.0.collect(p)
        }
        fn identity(&self) -> Result<Shop, String> {
            self.0.identity()
        }
        fn claim(&self, receipt: &str) -> Claim {
            self.0.claim(receipt)
        }
        fn offer(&self, _ask: &OfferAsk) -> Result<String, String> {
            Err("no account".into())
        }
        fn settle(&self, s: &Settle) -> Settlement {
            self.0.settle(s)
        }
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn payment_headers_are_read_from_the_cgi_environment() {
        let rq = inband("/paper", "", &[("HTTP_PAYMENT_SIGNATURE", " v1.abc "), ("HTTP_PAYMENT_RECEIPT", "v1.def")]);
        assert_eq!(rq.payment_signature.as_deref(), Some("v1.abc"));
        assert_eq!(rq.payment_receipt.as_deref(), Some("v1.def"));
        assert!(!rq.browser);
        assert_eq!(rq.server_origin.as_deref(), Some("http://shop.example:8080"));
        let v6 = inband("/paper", "", &[("SERVER_NAME", "::1"), ("REQUEST_SCHEME", "https")]);
        assert_eq!(v6.server_origin.as_deref(), Some("https://[::1]:8080"));
    }

    #[test]
    fn a_payment_header_is_settled_by_the_wallet_and_answered_with_the_item_and_receipt() {
        let mut w = paid();
        w.settlement = Settlement::Paid { receipt: "v1.receipt".into(), order: ORDER.into(), payment: 4 };
        let rq = inband("/paper", "", &[("HTTP_PAYMENT_SIGNATURE", "v1.sealed-payment_")]);
        let r = handle(&rq, &mut &b""[..], &config(), &w);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"%PDF-bytes"[..]));
        assert_eq!(header(&r, PAYMENT_RESPONSE), Some("v1.receipt"));
        let asked = w.settles.borrow()[0].clone();
        assert_eq!(asked.payment, "v1.sealed-payment_");
        assert_eq!(
            (asked.origin.as_str(), asked.resource.as_str()),
            ("http://shop.example:8080", "/cgi-bin/payme-cgi/paper")
        );
        assert_eq!((asked.item.as_str(), asked.price), ("paper", 37), "the catalog's item and price");
        assert!(w.asked.borrow().is_empty(), "nothing collected from REMOTE_ADDR");
        // HEAD never pays.
        let mut head = rq.clone();
        head.method = "HEAD".into();
        assert_eq!(handle(&head, &mut &b""[..], &config(), &w).status, 402);
        assert_eq!(w.settles.borrow().len(), 1);
    }

    #[test]
    fn in_band_refusals_have_their_status_and_code_and_plain_words() {
        let rq = inband("/paper", "", &[("HTTP_PAYMENT_SIGNATURE", "v1.sealed")]);
        for (code, label, status) in [
            (46, "unexpected_payment", 409),
            (12, "nonce_outside_window", 410),
            (1, "malformed", 400),
            (5, "decrypt_failed", 400),
            (30, "coin_not_in_circulation", 402),
            (6, "bad_signature", 402),
            (50, "peer_bank_unavailable", 503),
        ] {
            let mut w = paid();
            w.settlement = Settlement::Refused {
                code,
                label: label.into(),
                reason: "details <b>from the OS</b>: /var/lib/secret".into(),
            };
            let r = handle(&rq, &mut &b""[..], &config(), &w);
            assert_eq!(r.status, status, "{label}");
            assert_eq!(header(&r, PAYMENT_REFUSED), Some(format!("{code} {label}").as_str()));
            let page = html(&r);
            assert!(!page.contains("secret") && !page.contains("<b>"), "details stay in the log: {page}");
            assert!(
                page.contains("Nothing was charged") || page.contains("not be charged") || page.contains("not taken"),
                "{page}"
            );
        }
        // A label is never reflected as given.
        let mut w = paid();
        w.settlement = Settlement::Refused { code: 99, label: "x\r\nSet-Cookie: a".into(), reason: String::new() };
        assert_eq!(header(&handle(&rq, &mut &b""[..], &config(), &w), PAYMENT_REFUSED), Some("99 refused"));
        // Gave up waiting: 503, send the same payment again; wallet gone: 503.
        w.settlement = Settlement::GaveUp;
        let r = handle(&rq, &mut &b""[..], &config(), &w);
        assert_eq!((r.status, header(&r, "Retry-After")), (503, Some("2")));
        w.settlement = Settlement::WalletDown("x".into());
        assert_eq!(handle(&rq, &mut &b""[..], &config(), &w).status, 503);
        // A header that is no payment never reaches the wallet.
        for bad in ["v1.<script>", &"v1.A".repeat(MAX_PAYMENT), "v1 abc"] {
            let w = paid();
            let r = handle(&inband("/paper", "", &[("HTTP_PAYMENT_SIGNATURE", bad)]), &mut &b""[..], &config(), &w);
            assert_eq!((r.status, header(&r, PAYMENT_REFUSED)), (400, Some("1 malformed")));
            assert!(w.settles.borrow().is_empty());
        }
        assert_eq!(
            handle(&inband("/nope", "", &[("HTTP_PAYMENT_SIGNATURE", "v1.x")]), &mut &b""[..], &config(), &paid())
                .status,
            404
        );
    }

    #[test]
    fn a_payment_receipt_header_reopens_the_item() {
        let mut w = paid();
        w.claimed = Claim::Order { item: "paper".into(), order: ORDER.into(), expired: false };
        let r = handle(&inband("/paper", "", &[("HTTP_PAYMENT_RECEIPT", "v1.receipt")]), &mut &b""[..], &config(), &w);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"%PDF-bytes"[..]));
        assert_eq!(w.claims.borrow().as_slice(), ["v1.receipt".to_string()]);
        w.claimed = Claim::Order { item: "paper".into(), order: ORDER.into(), expired: true };
        assert_eq!(
            handle(&inband("/paper", "", &[("HTTP_PAYMENT_RECEIPT", "v1.r")]), &mut &b""[..], &config(), &w).status,
            410
        );
        w.claimed = Claim::Unknown;
        assert_eq!(
            handle(&inband("/paper", "", &[("HTTP_PAYMENT_RECEIPT", "v1.r")]), &mut &b""[..], &config(), &w).status,
            403
        );
    }

    fn post(path: &str, form: &str, config: &Config, w: &Recorder) -> Response {
        let mut rq = req("POST", path);
        rq.content_length = Some(form.len());
        handle(&rq, &mut form.as_bytes(), config, w)
    }

    fn html(r: &Response) -> String {
        String::from_utf8(r.body.clone()).unwrap()
    }

    const ORDER: &str = "3f2a91bc0d4e77a101020304050607ff";

    #[test]
    fn get_shows_order_id_and_fingerprint_and_never_collects() {
        let w = paid();
        let r = handle(&req("GET", "/paper"), &mut &b""[..], &config(), &w);
        assert_eq!(r.status, 200);
        assert!(r.headers.contains(&("Content-Type".into(), "text/html; charset=utf-8".into())));
        let page = html(&r);
        assert!(page.contains("<form class=\"buy\" method=\"post\" action=\"/cgi-bin/payme-cgi/paper\">"), "{page}");
        assert!(page.contains("<span class=\"price\">0.37 EUR</span>"), "the price in the currency: {page}");
        assert!(page.contains("name=\"viewport\""), "readable on a phone: {page}");
        assert!(page.contains("id=\"waiting\" hidden"), "the countdown shows only while waiting: {page}");
        let link = page.split("id=\"pay-with-payme\" href=\"").nth(1).unwrap().split('"').next().unwrap();
        let link = link.replace("&amp;", "&");
        let (base, query) = link.split_once('?').unwrap();
        assert_eq!(base, "http://127.0.0.1:8002/pay", "the buyer's wallet window");
        let q = parse_form(query);
        assert_eq!(q["url"], "http://shop.example:8080/cgi-bin/payme-cgi/paper");
        assert_eq!(Some(q["offer"].as_str()), header(&r, PAYMENT_REQUIRED), "the link carries the page's offer");
        assert!(page.contains("The &lt;PayMe&gt; paper"), "escaped: {page}");
        assert!(page.contains("SHA256:ab&lt;cd&gt;"), "the shop key's fingerprint, escaped: {page}");
        let hidden = page.split("name=\"order\" value=\"").nth(1).unwrap();
        let order = OrderId::parse(&hidden[..32]).expect("the form carries the order id");
        assert!(page.contains(&format!("<strong class=\"order\">{}</strong>", order.short())), "{page}");
        assert!(!page.contains("name=\"wallet\""), "no wallet field by default: {page}");
        assert!(w.asked.borrow().is_empty(), "GET never spends money");
        let again = html(&handle(&req("GET", "/paper"), &mut &b""[..], &config(), &w));
        assert!(!again.contains(&order.hex()), "each page draws its own order");
        let list = handle(&req("GET", ""), &mut &b""[..], &config(), &w);
        assert!(html(&list).contains("Bob&#39;s &lt;Books&gt;"));
    }

    #[test]
    fn a_browser_that_paid_gets_the_receipt_and_a_link_to_the_item() {
        let w = paid();
        let r = post("/paper", &format!("order={ORDER}"), &config(), &w);
        assert_eq!(r.status, 200);
        let page = html(&r);
        assert!(page.contains("<strong id=\"payment\">9</strong>"), "the payment number: {page}");
        assert!(page.contains("<strong class=\"price\">0.37 EUR</strong>"), "the amount: {page}");
        assert!(page.contains("href=\"/cgi-bin/payme-cgi/paper?receipt=ab12\""), "the link that re-opens: {page}");
        assert!(page.contains("Bob&#39;s &lt;Books&gt;"), "the shop, escaped: {page}");
        let mut euro = config();
        euro.currency = "€".into();
        assert!(html(&post("/paper", &format!("order={ORDER}"), &euro, &w)).contains("€0.37"));
    }

    #[test]
    fn post_collects_the_pages_order_from_remote_addr() {
        let w = paid();
        let mut rq = req("POST", "/paper");
        rq.browser = false;
        let form = format!("order={ORDER}");
        rq.content_length = Some(form.len());
        let r = handle(&rq, &mut form.as_bytes(), &config(), &w);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"%PDF-bytes"[..]));
        assert!(r.headers.contains(&("Content-Type".into(), "application/pdf".into())));
        assert!(r.headers.contains(&("X-Payme-Order".into(), ORDER.into())));
        let asked = w.asked.borrow()[0].clone();
        assert_eq!(
            asked,
            Purchase {
                buyer: "192.0.2.7:8001".into(),
                amount: 37,
                description: "The <PayMe> paper".into(),
                item: "paper".into(),
                order: OrderId::parse(ORDER).unwrap(),
            }
        );
        // Without an order (a script's POST), a fresh one.
        assert_eq!(post("/paper", "", &config(), &w).status, 200);
        assert_ne!(w.asked.borrow()[1].order, asked.order);
        assert_eq!(post("/paper", "order=zz", &config(), &w).status, 400, "a damaged order id");
    }

    #[test]
    fn the_wallet_field_is_off_by_default_and_on_takes_only_a_port_of_remote_addr() {
        let w = paid();
        post("/paper", "wallet=10.1.2.3%3A9001", &config(), &w);
        assert_eq!(w.asked.borrow()[0].buyer, "192.0.2.7:8001", "ignored when off");
        let on = config_with("allow_buyer_address = true");
        let page = html(&handle(&req("GET", "/paper"), &mut &b""[..], &on, &w));
        assert!(page.contains("name=\"wallet\""), "{page}");
        post("/paper", "wallet=9001", &on, &w);
        assert_eq!(w.asked.borrow()[1].buyer, "192.0.2.7:9001");
        post("/paper", "wallet=192.0.2.7%3A9002", &on, &w);
        assert_eq!(w.asked.borrow()[2].buyer, "192.0.2.7:9002");
        for bad in ["10.1.2.3%3A9001", "127.0.0.1%3A8001", "http://evil/", "0", "70000", "localhost%3A22"] {
            let r = post("/paper", &format!("wallet={bad}"), &on, &w);
            assert_eq!(r.status, 400, "{bad}");
            let text = html(&r);
            assert!(text.contains("on the computer you are browsing from"), "{text}");
            assert!(!text.contains("evil") && !text.contains("10.1.2.3"), "the field is not reflected: {text}");
        }
        assert_eq!(w.asked.borrow().len(), 3, "no collect for a refused address");
        let mut v6 = req("POST", "/paper");
        v6.remote_addr = "2001:db8::7".into();
        let form = "wallet=%5B2001%3Adb8%3A%3A7%5D%3A9003";
        v6.content_length = Some(form.len());
        handle(&v6, &mut form.as_bytes(), &on, &w);
        assert_eq!(w.asked.borrow()[3].buyer, "[2001:db8::7]:9003");
    }

    #[test]
    fn each_refusal_is_worded_plainly_without_the_details() {
        let cases = [
            ("refused_by_user", "You declined"),
            ("not_enough_money", "does not hold enough money"),
            ("no_answer", "could not reach your payme wallet at 192.0.2.7:8001"),
            ("timeout", "no answer came in time"),
            ("busy", "too many payments"),
            ("merchant_key_changed", "different key"),
            ("unknown_merchant", "only shops it already knows"),
            ("unexpected_payment", "already paid"),
            ("peer_bank_unavailable", "bank has not confirmed"),
            ("nonce_replay", "already asked to pay this order"),
            ("something_new", "The payment was not made."),
        ];
        for (label, text) in cases {
            let w = with(Outcome::Refused {
                label: label.into(),
                reason: "connect: Connection refused (os error 111) <x>".into(),
            });
            let r = post("/paper", &format!("order={ORDER}"), &config(), &w);
            assert_eq!((r.status, r.reason), (402, "Payment Required"));
            let page = html(&r);
            assert!(page.contains(text), "{label}: {page}");
            assert!(page.contains("3f2a-91bc-0d4e-77a1"), "the order id: {page}");
            assert!(!page.contains("os error") && !page.contains("&lt;x&gt;"), "no details: {page}");
        }
    }

    #[test]
    fn a_page_that_gives_up_says_how_to_get_the_item_with_the_receipt() {
        let r = post("/paper", &format!("order={ORDER}"), &config(), &with(Outcome::GaveUp));
        assert_eq!(r.status, 402);
        let page = html(&r);
        assert!(page.contains("Payment not confirmed yet") && page.contains("payme-wallet receipt"), "{page}");
        assert!(page.contains("name=\"receipt\"") && page.contains("3f2a-91bc-0d4e-77a1"), "{page}");
        assert!(!page.contains("did not complete in time"), "{page}");
    }

    #[test]
    fn a_receipt_reopens_its_item_until_the_order_expires() {
        let claimed = |item: &str, expired| Claim::Order { item: item.into(), order: ORDER.into(), expired };
        let mut w = paid();
        w.claimed = claimed("paper", false);
        let mut get = req("GET", "/paper");
        get.receipt = Some("00ff".into());
        let r = handle(&get, &mut &b""[..], &config(), &w);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"%PDF-bytes"[..]));
        assert!(w.asked.borrow().is_empty(), "a claim collects nothing");
        assert_eq!(post("/paper", "receipt=00ff", &config(), &w).status, 200, "as a form field too");
        w.claimed = claimed("atlas", false);
        assert_eq!(handle(&get, &mut &b""[..], &config(), &w).status, 403, "another item's receipt");
        w.claimed = Claim::Unknown;
        assert_eq!(handle(&get, &mut &b""[..], &config(), &w).status, 403);
        w.claimed = claimed("paper", true);
        assert_eq!(handle(&get, &mut &b""[..], &config(), &w).status, 410);
        w.claimed = Claim::WalletDown("x".into());
        assert_eq!(handle(&get, &mut &b""[..], &config(), &w).status, 503);
        get.receipt = Some("<script>".into());
        assert_eq!(handle(&get, &mut &b""[..], &config(), &w).status, 400);
        let from_env = Request::from_env(
            &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/paper"), ("QUERY_STRING", "receipt=00ff")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        assert_eq!(from_env.receipt.as_deref(), Some("00ff"));
    }

    /// A body that counts what was read of it.
    struct Counted<'a>(&'a [u8], usize);
    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (&self.0[self.1..]).read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn every_status_and_the_body_read_before_any_answer() {
        let body = vec![b'x'; 3000];
        let answer = |method: &str, path: &str, w: &Recorder| {
            let mut rq = req(method, path);
            rq.content_length = Some(body.len());
            let mut input = Counted(&body, 0);
            let r = handle(&rq, &mut input, &config(), w);
            assert_eq!(input.1, body.len(), "{method} {path}: the whole body is read");
            r
        };
        assert_eq!(answer("DELETE", "/paper", &paid()).status, 405);
        assert_eq!(answer("POST", "/nope", &paid()).status, 404);
        assert_eq!(answer("POST", "/paper", &paid()).status, 200);
        assert_eq!(answer("GET", "/nope", &paid()).status, 404);
        let big = vec![b'x'; MAX_FORM + 1];
        let mut rq = req("POST", "/paper");
        rq.content_length = Some(big.len());
        let mut input = Counted(&big, 0);
        assert_eq!(handle(&rq, &mut input, &config(), &paid()).status, 413);
        assert_eq!(input.1, big.len(), "a too large body is read and thrown away");
        rq.content_length = Some(10);
        assert_eq!(handle(&rq, &mut &b"short"[..], &config(), &paid()).status, 400, "incomplete");
        let r = handle(&req("DELETE", "/paper"), &mut &b""[..], &config(), &paid());
        assert!(r.headers.contains(&("Allow".into(), "GET, HEAD, POST".into())));
        let down = with(Outcome::WalletDown("x".into()));
        assert_eq!(post("/paper", "", &config(), &down).status, 503);
        let mut gone = paid();
        gone.down = true;
        assert_eq!(handle(&req("GET", "/paper"), &mut &b""[..], &config(), &gone).status, 503);
        let r = post("/lost", "", &config(), &paid());
        assert_eq!(r.status, 500, "paid, but the item cannot be read");
        assert!(html(&r).contains("keep your receipt"));
        let head = handle(&req("HEAD", "/paper"), &mut &b""[..], &config(), &paid());
        let out = head.to_cgi(true);
        assert!(out.ends_with(b"\r\n\r\n"), "no body for HEAD");
        assert!(String::from_utf8_lossy(&out).contains(&format!("Content-Length: {}", head.body.len())));
    }

    #[test]
    fn by_default_the_page_waits_longer_than_a_wallets_consent_window_and_collect() {
        // payme-wallet's defaults: consent_timeout_secs 45, collect_timeout_secs 55.
        assert!(config().timeout_secs > 55 + 30, "{}", config().timeout_secs);
        assert!(!config().allow_buyer_address);
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
