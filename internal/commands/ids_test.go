package commands

import "testing"

func TestAWSID(t *testing.T) {
	for _, tc := range []struct {
		tok, prefix, want string
		ok                bool
	}{
		{"snap-0123abcd", "snap-", "snap-0123abcd", true},
		{"SNAP-0123ABCD", "snap-", "snap-0123abcd", true},
		{"snap-0123456789abcdef0", "snap-", "snap-0123456789abcdef0", true},
		{"snap-0123abc", "snap-", "", false},
		{"snap-0123abcdef", "snap-", "", false},
		{"snap-0123abcg", "snap-", "", false},
		{"i-0123abcd", "i-", "i-0123abcd", true},
		{"i-0123abcd", "snap-", "", false},
		{"ami-0123456789ABCDEF0", "ami-", "ami-0123456789abcdef0", true},
		{"snap-0123abc\u212a", "snap-", "", false}, // Kelvin sign is not "k" (nor hex)
	} {
		got, ok := awsID(tc.tok, tc.prefix)
		if got != tc.want || ok != tc.ok {
			t.Errorf("awsID(%q, %q) = %q, %v; want %q, %v", tc.tok, tc.prefix, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseOpID(t *testing.T) {
	for tok, want := range map[string]string{
		"req-7f3a9c": "req-7f3a9c", "OP-20261128-0001": "op-20261128-0001", "abc": "abc", "0ab": "0ab",
		"ab": "", "-ab": "", "a_b": "", "a.bc": "", "ab\u212a": "",
	} {
		got, ok := parseOpID(tok)
		if got != want || ok != (want != "") {
			t.Errorf("parseOpID(%q) = %q, %v; want %q", tok, got, ok, want)
		}
	}
}

func TestBucketProblem(t *testing.T) {
	for b, valid := range map[string]bool{
		"abc": true, "my-backups": true, "a.b.c": true, "0bucket9": true,
		"ab": false, "-ab": false, "ab-": false, "a..b": false, "a_b": false, "ABC": false,
		"10.0.0.1": false, "10.0.0.1.2": true,
	} {
		if got := bucketProblem(b) == ""; got != valid {
			t.Errorf("bucketProblem(%q) valid = %v, want %v (%s)", b, got, valid, bucketProblem(b))
		}
	}
}
