"""Secrets and harmless look-alikes shared by the redaction and property tests."""

# (kind, text that carries the secret, the secret itself)
SECRETS = [
    ("openai key", "calling with sk-proj-abcdefghijklmnop1234", "sk-proj-abcdefghijklmnop1234"),
    ("aws access key id", "id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ("aws temporary key id", "id ASIAY34FZKBOKMUTVV7A used", "ASIAY34FZKBOKMUTVV7A"),
    ("aws secret key", "secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("bare jwt", "got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJzdWIiOiIxMjM0NTY3ODkwIn0"),
    ("basic auth", "Authorization: Basic dXNlcjpodW50ZXIyMjI=", "dXNlcjpodW50ZXIyMjI="),
    ("bearer token", "Authorization: Bearer abcdefghijklmnopqrstuvwx", "abcdefghijklmnopqrstuvwx"),
    ("password in url", "connecting to postgres://app:hunter2secret@db.internal:5432/rag", "hunter2secret"),
    ("slack webhook", "posting to https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX",
     "T0000/B0000/XXXXXXXXXXXXXXXX"),
    ("pagerduty key", "routing_key: 0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("json-quoted password", 'body {"password": "hunter22", "user": "a"}', "hunter22"),
    ("password pair", "login password=hunter22 ok", "hunter22"),
    ("card number", "paid with 4111 1111 1111 1111 today", "4111 1111 1111 1111"),
    ("card number without spaces", "card=5500005555555559", "5500005555555559"),
    ("e-mail address", "reply to alice.smith+rag@mail.example.co.uk today", "alice.smith+rag@mail.example.co.uk"),
    ("international phone number", "call +1 (415) 555-2671 now", "555-2671"),
    ("phone number", "call 415-555-2671 now", "415-555-2671"),
    ("bracketed phone number", "call (415) 555-2671 now", "555-2671"),
    ("us social security number", "ssn 078-05-1120 on file", "078-05-1120"),
    ("bare pagerduty key", "paging e93facc04764012d7bfb002500d5d1a6 failed", "e93facc04764012d7bfb002500d5d1a6"),
    ("upper-case password pair", "DB_PASSWORD=hunter22 set", "hunter22"),
]
# field name -> value: the name alone says it is secret
SECRET_FIELDS = {"password": "p4ss", "api_key": "k3y", "token": "t0k", "db_password": "pw",
                 "Authorization": "Basic xyz", "cookie": "session=abc", "client_secret": "cs",
                 "aws_secret_access_key": "sak"}
HARMLESS = ["request 3fa85f6457174562b3fc2c963f66afa6", "commit 356a192b7913b04c54574d18c28d46e6395428ab",
            "order 4111 1111 1111 1112", "tokens: 500", "token_type=input",
            "ended 2026-11-21T10:00:01.234567+00:00", "took +0.00012345 s", "sizes 128 256 1024",
            "epoch 1795255201.123", "version 1.2.3 of pkg@1.2.3", "user @alice said hi",
            "id 3fa85f64-5717-4562-b3fc-2c963f66afa6"]
