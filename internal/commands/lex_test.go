package commands

import "testing"

func TestUnwrapLinks(t *testing.T) {
	for in, want := range map[string]string{
		"restore <s3://b/k>":             "restore s3://b/k",
		"restore <s3://b/k|label here>":  "restore s3://b/k",
		"a <b> <c|d> e":                  "a b c e",
		"no brackets":                    "no brackets",
		"<<x>>":                          "<x>",
		"a>b":                            "a>b",
		"a<b":                            "a<b",
		"<mailto:x@y.z|x@y.z> and <@U1>": "x@y.z and @U1",
		"s3://<http://a.example.com/k|a.example.com/k>": "s3://a.example.com/k",
		"<https://a.example.com|other>":                 "https://a.example.com",
		"<http://|>":                                    "http://",
	} {
		if got := unwrapLinks(in); got != want {
			t.Errorf("unwrapLinks(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTokens(t *testing.T) {
	for in, want := range map[string][]string{
		"  /circleci   Backup\tNOW\n tarball ": {"Backup", "NOW", "tarball"},
		"/x /y":                                {"/y"},
		"restore &lt;snap-0123abcd&gt;":        {"restore", "snap-0123abcd"},
		"a&amp;lt;b":                           {"a&lt;b"},
		"st\u200batus":                         {"status"},
	} {
		got := tokens(in)
		if len(got) != len(want) {
			t.Errorf("tokens(%q) = %q, want %q", in, got, want)
			continue
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("tokens(%q) = %q, want %q", in, got, want)
				break
			}
		}
	}
}
