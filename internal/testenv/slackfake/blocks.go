package slackfake

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/slack-go/slack"
)

// Slack's Block Kit limits for messages. The fake enforces them because a
// message over a limit is rejected by Slack as a whole, and a test that
// passed against a lenient fake would hide that.
const (
	maxBlocks          = 50
	maxSectionText     = 3000
	maxSectionFields   = 10
	maxFieldText       = 2000
	maxHeaderText      = 150
	maxContextElements = 10
	maxActionElements  = 25
	maxBlockID         = 255
)

// validateBlocks returns Slack-style messages for everything Slack would
// reject in a blocks array; none means valid.
func validateBlocks(raw string) []string {
	var blocks []map[string]any
	if err := json.Unmarshal([]byte(raw), &blocks); err != nil {
		return []string{"[ERROR] must be an array of objects [json-pointer:/blocks]"}
	}
	var decoded slack.Blocks
	if err := json.Unmarshal([]byte(raw), &decoded); err != nil {
		return []string{fmt.Sprintf("[ERROR] %v [json-pointer:/blocks]", err)}
	}
	var msgs []string
	bad := func(ptr, format string, args ...any) {
		msgs = append(msgs, fmt.Sprintf("[ERROR] "+format+" [json-pointer:/blocks%s]", append(args, ptr)...))
	}
	if len(blocks) > maxBlocks {
		bad("", "no more than %d items allowed", maxBlocks)
	}
	seenIDs := map[string]bool{}
	for i, b := range blocks {
		p := fmt.Sprintf("/%d", i)
		typ, _ := b["type"].(string)
		if i < len(decoded.BlockSet) && isUnknown(decoded.BlockSet[i]) {
			bad(p+"/type", "unsupported type: %q", typ)
			continue
		}
		if id, _ := b["block_id"].(string); id != "" {
			if seenIDs[id] {
				bad(p+"/block_id", "duplicate block_id %q", id)
			}
			seenIDs[id] = true
			if utf8.RuneCountInString(id) > maxBlockID {
				bad(p+"/block_id", "must be less than %d characters", maxBlockID+1)
			}
		}
		switch typ {
		case "section":
			text, hasText := textOf(b["text"])
			fields, _ := b["fields"].([]any)
			if !hasText && len(fields) == 0 {
				bad(p, "must provide either text or fields")
			}
			if hasText {
				checkLen(bad, p+"/text/text", text, 1, maxSectionText)
			}
			if len(fields) > maxSectionFields {
				bad(p+"/fields", "no more than %d items allowed", maxSectionFields)
			}
			for j, f := range fields {
				t, _ := textOf(f)
				checkLen(bad, fmt.Sprintf("%s/fields/%d/text", p, j), t, 1, maxFieldText)
			}
		case "header":
			text, _ := textOf(b["text"])
			checkLen(bad, p+"/text/text", text, 1, maxHeaderText)
		case "context":
			els, _ := b["elements"].([]any)
			if len(els) == 0 {
				bad(p+"/elements", "must provide at least 1 item")
			}
			if len(els) > maxContextElements {
				bad(p+"/elements", "no more than %d items allowed", maxContextElements)
			}
		case "actions":
			els, _ := b["elements"].([]any)
			if len(els) > maxActionElements {
				bad(p+"/elements", "no more than %d items allowed", maxActionElements)
			}
			// Slack refuses a block whose elements share an action_id.
			seen := map[string]bool{}
			for j, el := range els {
				m, _ := el.(map[string]any)
				id, _ := m["action_id"].(string)
				if id == "" {
					continue
				}
				if seen[id] {
					bad(fmt.Sprintf("%s/elements/%d/action_id", p, j), "action_id %q is already used in this block", id)
				}
				seen[id] = true
			}
		}
	}
	return msgs
}

func isUnknown(b slack.Block) bool {
	_, ok := b.(*slack.UnknownBlock)
	return ok
}

func checkLen(bad func(ptr, format string, args ...any), ptr, s string, lo, hi int) {
	switch n := utf8.RuneCountInString(s); {
	case n < lo:
		bad(ptr, "must be more than %d characters", lo-1)
	case n > hi:
		bad(ptr, "must be less than %d characters", hi+1)
	}
}

// textOf reads a text composition object {"type":…,"text":…}.
func textOf(v any) (string, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return "", false
	}
	s, ok := m["text"].(string)
	return s, ok
}

// joinText is the text a reader would see: text, then every piece of text
// in the blocks, then extra, one per line. blocksJSON is used when known so
// that block types slack-go cannot re-encode still count.
func joinText(text string, blocks slack.Blocks, blocksJSON string, extra ...string) string {
	var parts []string
	if text != "" {
		parts = append(parts, text)
	}
	raw := []byte(blocksJSON)
	if len(raw) == 0 && len(blocks.BlockSet) > 0 {
		raw, _ = json.Marshal(blocks)
	}
	if len(raw) > 0 {
		var v any
		if json.Unmarshal(raw, &v) == nil {
			collectText(v, &parts)
		}
	}
	parts = append(parts, extra...)
	return strings.Join(parts, "\n")
}

// collectText walks decoded Block Kit JSON. Text lives under "text" keys
// (text objects, rich text runs, markdown blocks); rich text mentions and
// emoji are rendered the way Slack's mrkdwn writes them so that a test can
// look for "<@U123>" whichever way the bot built the message.
func collectText(v any, out *[]string) {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			collectText(e, out)
		}
	case map[string]any:
		str := func(k string) string { s, _ := x[k].(string); return s }
		switch str("type") {
		case "user":
			*out = append(*out, "<@"+str("user_id")+">")
			return
		case "channel":
			*out = append(*out, "<#"+str("channel_id")+">")
			return
		case "usergroup":
			*out = append(*out, "<!subteam^"+str("usergroup_id")+">")
			return
		case "broadcast":
			*out = append(*out, "<!"+str("range")+">")
			return
		case "emoji":
			*out = append(*out, ":"+str("name")+":")
			return
		case "link":
			if t := str("text"); t != "" {
				*out = append(*out, t)
			} else {
				*out = append(*out, str("url"))
			}
			return
		}
		switch t := x["text"].(type) {
		case string:
			if t != "" {
				*out = append(*out, t)
			}
		case map[string]any:
			collectText(t, out)
		}
		// Other keys in sorted order so the result does not depend on map
		// iteration; "text" went first because it is what comes first on
		// screen (a section's text before its fields).
		keys := make([]string, 0, len(x))
		for k := range x {
			if k != "text" {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			switch x[k].(type) {
			case []any, map[string]any:
				collectText(x[k], out)
			}
		}
	}
}
