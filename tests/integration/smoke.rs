use crate::support::Server;

#[test]
fn status_page_answers() {
    let server = Server::start(&[]);
    let r = server.get("/status");
    assert_eq!(r.status, 200);
    assert!(r.body_text().contains("Zayzoon rocking here!"));
}
