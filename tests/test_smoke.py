def test_register_login_post(client, make_account):
    ada = make_account("ada_l")
    r = client.post("/api/v1/posts", json={"body": "hello"}, headers=ada.auth)
    assert r.status_code == 201, r.get_json()
    print(r.get_json(), dict(r.headers))
