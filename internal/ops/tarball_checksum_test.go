package ops

import (
	"crypto/sha256"
	"encoding/base64"
	"testing"
)

// The composite checksum is S3's for a SHA-256 multipart upload: the
// SHA-256 of the parts' raw SHA-256 digests, base64, "-" and the count.
func TestCompositeSHA256IsTheChecksumOfThePartChecksums(t *testing.T) {
	parts := [][]byte{[]byte("first part"), []byte("second part"), []byte("third")}
	var b64 []string
	var cat []byte
	for _, p := range parts {
		s := sha256.Sum256(p)
		b64 = append(b64, base64.StdEncoding.EncodeToString(s[:]))
		cat = append(cat, s[:]...)
	}
	whole := sha256.Sum256(cat)
	want := base64.StdEncoding.EncodeToString(whole[:]) + "-3"
	if got := compositeSHA256(b64); got != want {
		t.Fatalf("composite %s, want %s", got, want)
	}
	for _, tc := range []struct {
		got  string
		same bool
	}{
		{want, true},
		{want[:len(want)-2], true}, // without the part count, as some answers give it
		{want[:len(want)-2] + "-4", false},
		{"", false},
		{"AAAA-3", false},
	} {
		if sameComposite(tc.got, want) != tc.same {
			t.Errorf("sameComposite(%q, %q) = %v", tc.got, want, !tc.same)
		}
	}
}
