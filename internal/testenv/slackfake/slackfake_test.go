package slackfake_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slack-go/slack"

	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

const token = "xoxb-test"

func setup(t *testing.T) (*slackfake.Server, *slack.Client) {
	t.Helper()
	fake := slackfake.New()
	t.Cleanup(fake.Close)
	return fake, slack.New(token, slack.OptionAPIURL(fake.APIURL()))
}

func slackErr(t *testing.T, err error) string {
	t.Helper()
	var se slack.SlackErrorResponse
	if !errors.As(err, &se) {
		t.Fatalf("want a slack.SlackErrorResponse, got %T: %v", err, err)
	}
	return se.Err
}

func TestPostThenUpdate(t *testing.T) {
	fake, api := setup(t)
	ctx := context.Background()

	ch, ts, err := api.PostMessageContext(ctx, "C1", slack.MsgOptionText("deploying", false))
	if err != nil || ch != "C1" || ts == "" {
		t.Fatalf("post: ch=%q ts=%q err=%v", ch, ts, err)
	}
	blocks := []slack.Block{slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, "*done* in 3s", false, false), nil, nil)}
	_, uts, text, err := api.UpdateMessageContext(ctx, "C1", ts, slack.MsgOptionText("deployed", false), slack.MsgOptionBlocks(blocks...))
	if err != nil || uts != ts || text != "deployed" {
		t.Fatalf("update: ts=%q text=%q err=%v", uts, text, err)
	}

	msgs := fake.Messages("C1")
	if len(msgs) != 1 {
		t.Fatalf("want 1 message, got %+v", msgs)
	}
	m := msgs[0]
	if m.TS != ts || m.Text != "deployed" || m.Updates != 1 || len(m.Blocks.BlockSet) != 1 {
		t.Fatalf("message state: %+v", m)
	}
	if !strings.Contains(m.AllText(), "*done* in 3s") {
		t.Fatalf("AllText: %q", m.AllText())
	}

	calls := fake.Calls()
	if len(calls) != 2 || calls[0].Method != "chat.postMessage" || calls[1].Method != "chat.update" {
		t.Fatalf("calls: %v", calls)
	}
	if calls[0].TS != ts || calls[1].TS != ts || calls[1].Token != token || calls[1].Status != http.StatusOK {
		t.Fatalf("recorded calls: %+v", calls)
	}
	if len(calls[1].Blocks.BlockSet) != 1 || calls[1].BlocksJSON == "" {
		t.Fatalf("blocks not recorded: %+v", calls[1])
	}

	// An update without blocks keeps them; blocks=[] clears them.
	if _, _, _, err := api.UpdateMessageContext(ctx, "C1", ts, slack.MsgOptionText("again", false)); err != nil {
		t.Fatal(err)
	}
	if m := fake.Messages("C1")[0]; len(m.Blocks.BlockSet) != 1 || m.Updates != 2 {
		t.Fatalf("blocks should be kept: %+v", m)
	}
	if _, _, _, err := api.UpdateMessageContext(ctx, "C1", ts, slack.MsgOptionText("again", false), slack.MsgOptionBlocks()); err != nil {
		t.Fatal(err)
	}
	if m := fake.Messages("C1")[0]; len(m.Blocks.BlockSet) != 0 || m.Updates != 3 {
		t.Fatalf("blocks should be cleared: %+v", m)
	}
}

func TestTimestampsUniqueAndThreads(t *testing.T) {
	fake, api := setup(t)
	_, parent, err := api.PostMessage("C1", slack.MsgOptionText("parent", false))
	if err != nil {
		t.Fatal(err)
	}
	_, reply, err := api.PostMessage("C1", slack.MsgOptionText("reply", false), slack.MsgOptionTS(parent))
	if err != nil {
		t.Fatal(err)
	}
	if reply <= parent {
		t.Fatalf("ts must increase: %s then %s", parent, reply)
	}
	msgs := fake.Messages("C1")
	if len(msgs) != 2 || msgs[1].ThreadTS != parent || msgs[0].ThreadTS != "" {
		t.Fatalf("thread: %+v", msgs)
	}
	if c := fake.Calls()[1]; c.ThreadTS != parent || c.TS != reply {
		t.Fatalf("call: %+v", c)
	}
}

func TestUpdateUnknownTS(t *testing.T) {
	fake, api := setup(t)
	_, _, _, err := api.UpdateMessage("C1", "1.000100", slack.MsgOptionText("x", false))
	if got := slackErr(t, err); got != "message_not_found" {
		t.Fatalf("got %q", got)
	}
	// A ts from another channel does not count either.
	_, ts, err := api.PostMessage("C2", slack.MsgOptionText("x", false))
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, err = api.UpdateMessage("C1", ts, slack.MsgOptionText("x", false))
	if got := slackErr(t, err); got != "message_not_found" {
		t.Fatalf("got %q", got)
	}
	if c := fake.Calls()[0]; c.Error != "message_not_found" || c.Status != http.StatusOK {
		t.Fatalf("call: %+v", c)
	}
}

func TestFailNext(t *testing.T) {
	fake, api := setup(t)
	fake.FailNext("chat.postMessage", 1, http.StatusTooManyRequests, 7, "")
	fake.FailNext("chat.postMessage", 1, http.StatusServiceUnavailable, 0, "")
	fake.FailNext("chat.postMessage", 1, 0, 0, "fatal_error")

	_, _, err := api.PostMessage("C1", slack.MsgOptionText("x", false))
	var rl *slack.RateLimitedError
	if !errors.As(err, &rl) || rl.RetryAfter != 7*time.Second {
		t.Fatalf("want RateLimitedError 7s, got %T %v", err, err)
	}
	_, _, err = api.PostMessage("C1", slack.MsgOptionText("x", false))
	var sc slack.StatusCodeError
	if !errors.As(err, &sc) || sc.Code != http.StatusServiceUnavailable {
		t.Fatalf("want 503, got %T %v", err, err)
	}
	_, _, err = api.PostMessage("C1", slack.MsgOptionText("x", false))
	if got := slackErr(t, err); got != "fatal_error" {
		t.Fatalf("got %q", got)
	}
	if _, _, err = api.PostMessage("C1", slack.MsgOptionText("x", false)); err != nil {
		t.Fatalf("failures should be used up: %v", err)
	}
	if n := len(fake.Messages("C1")); n != 1 {
		t.Fatalf("failed posts must not create messages, got %d", n)
	}
	var statuses []int
	for _, c := range fake.Calls() {
		statuses = append(statuses, c.Status)
	}
	if fmt.Sprint(statuses) != "[429 503 200 200]" {
		t.Fatalf("statuses %v", statuses)
	}
	// Other methods are unaffected by a failure queued for one method.
	fake.FailNext("chat.update", 2, http.StatusTooManyRequests, 1, "")
	if _, _, err := api.PostMessage("C1", slack.MsgOptionText("x", false)); err != nil {
		t.Fatal(err)
	}
}

func TestNotInChannel(t *testing.T) {
	fake, api := setup(t)
	_, ts, err := api.PostMessage("C9", slack.MsgOptionText("before", false))
	if err != nil {
		t.Fatal(err)
	}
	fake.NotInChannel("C9")
	_, _, err = api.PostMessage("C9", slack.MsgOptionText("x", false))
	if got := slackErr(t, err); got != "not_in_channel" {
		t.Fatalf("post: %q", got)
	}
	_, _, _, err = api.UpdateMessage("C9", ts, slack.MsgOptionText("x", false))
	if got := slackErr(t, err); got != "not_in_channel" {
		t.Fatalf("update: %q", got)
	}
	info, err := api.GetConversationInfo(&slack.GetConversationInfoInput{ChannelID: "C9"})
	if err != nil || info.ID != "C9" || info.IsMember {
		t.Fatalf("conversations.info: %+v %v", info, err)
	}
	if _, _, err := api.PostMessage("C8", slack.MsgOptionText("x", false)); err != nil {
		t.Fatalf("other channels unaffected: %v", err)
	}
	fake.JoinChannel("C9")
	if _, _, err := api.PostMessage("C9", slack.MsgOptionText("x", false)); err != nil {
		t.Fatalf("after join: %v", err)
	}
}

func TestPostEphemeral(t *testing.T) {
	fake, api := setup(t)
	ts, err := api.PostEphemeral("C1", "U42", slack.MsgOptionText("only you", false))
	if err != nil || ts == "" {
		t.Fatalf("ts=%q err=%v", ts, err)
	}
	c := fake.Calls()[0]
	if c.Method != "chat.postEphemeral" || c.User != "U42" || c.Channel != "C1" || c.Text != "only you" || c.TS != ts {
		t.Fatalf("call: %+v", c)
	}
	if len(fake.Messages("C1")) != 0 {
		t.Fatal("ephemeral messages are not channel history")
	}
}

func TestResponseURL(t *testing.T) {
	fake, api := setup(t)
	u := fake.ResponseURL("C1/cmd 1")

	blocks, _ := json.Marshal([]slack.Block{slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, "Status", false, false))})
	body := fmt.Sprintf(`{"response_type":"in_channel","text":"all good","blocks":%s,"replace_original":true}`, blocks)
	resp, err := http.Post(u, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c := fake.Calls()[0]
	if c.Method != slackfake.MethodResponseURL || c.ResponseID != "C1/cmd 1" || c.Channel != "C1/cmd 1" ||
		c.ResponseType != "in_channel" || c.Text != "all good" || !c.ReplaceOriginal || len(c.Blocks.BlockSet) != 1 {
		t.Fatalf("call: %+v", c)
	}
	if got := fake.Text(c); got != "all good\nStatus" {
		t.Fatalf("Text: %q", got)
	}

	// slack-go's own response_url sender decodes the answer too.
	if _, _, err := api.PostMessage("", slack.MsgOptionResponseURL(u, slack.ResponseTypeEphemeral), slack.MsgOptionText("via slack-go", false)); err != nil {
		t.Fatalf("slack-go response_url: %v", err)
	}
	if c := fake.Calls()[1]; c.ResponseType != "ephemeral" || c.Text != "via slack-go" {
		t.Fatalf("call: %+v", c)
	}

	// Slack accepts five uses of one response_url.
	for i := 3; i <= 6; i++ {
		resp, err := http.Post(u, "application/json", strings.NewReader(`{"text":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := http.StatusOK
		if i == 6 {
			want = http.StatusNotFound
		}
		if resp.StatusCode != want {
			t.Fatalf("use %d: status %d %s", i, resp.StatusCode, msg)
		}
		if i == 6 && string(msg) != "expired_url" {
			t.Fatalf("use 6: %q", msg)
		}
	}
}

func TestUploadFile(t *testing.T) {
	fake, api := setup(t)
	data := []byte("line 1\nline 2\n")
	f, err := api.UploadFileContext(context.Background(), slack.UploadFileParameters{
		Reader: bytes.NewReader(data), FileSize: len(data), Filename: "report.txt",
		Title: "Nightly report", Channel: "C1", InitialComment: "here you go", ThreadTimestamp: "1.000100",
	})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	if f.ID == "" || f.Title != "Nightly report" {
		t.Fatalf("summary: %+v", f)
	}
	if got := fake.Uploads()[f.ID]; !bytes.Equal(got, data) {
		t.Fatalf("uploaded bytes %q", got)
	}
	var methods []string
	for _, c := range fake.Calls() {
		methods = append(methods, c.Method)
		if c.Token != token {
			t.Fatalf("%s carried token %q", c.Method, c.Token)
		}
	}
	if fmt.Sprint(methods) != "[files.getUploadURLExternal upload files.completeUploadExternal]" {
		t.Fatalf("methods %v", methods)
	}
	c := fake.Calls()[2]
	if c.Channel != "C1" || c.Text != "here you go" || c.ThreadTS != "1.000100" || len(c.Files) != 1 || c.Files[0].Title != "Nightly report" {
		t.Fatalf("complete call: %+v", c)
	}
	if got := fake.Text(c); !strings.Contains(got, "Nightly report") || !strings.Contains(got, "here you go") {
		t.Fatalf("Text: %q", got)
	}

	// Completing a file that was never uploaded fails as on Slack.
	_, err = api.CompleteUploadExternalContext(context.Background(), slack.CompleteUploadExternalParameters{
		Files: []slack.FileSummary{{ID: "F404"}}, Channel: "C1",
	})
	if got := slackErr(t, err); got != "file_not_found" {
		t.Fatalf("got %q", got)
	}
}

// fakeTB records Fatalf instead of stopping the goroutine, to test failure.
type fakeTB struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
}

func TestWaitFor(t *testing.T) {
	fake, api := setup(t)
	if _, _, err := api.PostMessage("C1", slack.MsgOptionText("early", false)); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, _, err := api.PostMessage("C1", slack.MsgOptionText("late: deployed", false))
		errc <- err
	}()
	start := time.Now()
	c := fake.WaitFor(t, 5*time.Second, "the deploy message", func(c slackfake.Call) bool {
		return strings.Contains(fake.Text(c), "deployed")
	})
	if c.Text != "late: deployed" {
		t.Fatalf("got %+v", c)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("WaitFor took %s", d)
	}

	// Calls made before the wait count too.
	if c := fake.WaitFor(t, time.Second, "early", func(c slackfake.Call) bool { return c.Text == "early" }); c.Text != "early" {
		t.Fatalf("got %+v", c)
	}

	ftb := &fakeTB{TB: t}
	c = fake.WaitFor(ftb, 100*time.Millisecond, "a message that never comes", func(c slackfake.Call) bool { return c.Text == "never" })
	if !ftb.failed || c.Method != "" {
		t.Fatalf("WaitFor should fail: failed=%v call=%+v", ftb.failed, c)
	}
	for _, want := range []string{"a message that never comes", "2 calls seen", `text="early"`, `text="late: deployed"`} {
		if !strings.Contains(ftb.msg, want) {
			t.Fatalf("failure message lacks %q:\n%s", want, ftb.msg)
		}
	}
}

func TestToken(t *testing.T) {
	fake, api := setup(t)
	fake.SetToken(token)
	bad := slack.New("xoxb-wrong", slack.OptionAPIURL(fake.APIURL()))
	_, _, err := bad.PostMessage("C1", slack.MsgOptionText("x", false))
	if got := slackErr(t, err); got != "invalid_auth" {
		t.Fatalf("got %q", got)
	}
	if _, err := bad.AuthTest(); err == nil || slackErr(t, err) != "invalid_auth" {
		t.Fatalf("auth.test with wrong token: %v", err)
	}
	none := slack.New("", slack.OptionAPIURL(fake.APIURL()))
	if _, err := none.AuthTest(); err == nil || slackErr(t, err) != "not_authed" {
		t.Fatalf("auth.test without token: %v", err)
	}
	if c := fake.Calls()[0]; c.Token != "xoxb-wrong" || c.Error != "invalid_auth" {
		t.Fatalf("call: %+v", c)
	}
	if _, _, err := api.PostMessage("C1", slack.MsgOptionText("x", false)); err != nil {
		t.Fatalf("right token: %v", err)
	}
	if len(fake.Messages("C1")) != 1 {
		t.Fatal("only the authorised post may land")
	}
	// response_url needs no token.
	resp, err := http.Post(fake.ResponseURL("r"), "application/json", strings.NewReader(`{"text":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("response_url: %d", resp.StatusCode)
	}
}

func TestAuthTestAndConversationsInfo(t *testing.T) {
	_, api := setup(t)
	at, err := api.AuthTest()
	if err != nil {
		t.Fatal(err)
	}
	if at.UserID != slackfake.BotUserID || at.BotID != slackfake.BotID || at.TeamID != slackfake.TeamID || at.Team != slackfake.TeamName || at.URL == "" {
		t.Fatalf("auth.test: %+v", at)
	}
	ch, err := api.GetConversationInfo(&slack.GetConversationInfoInput{ChannelID: "C0ABC"})
	if err != nil || ch.ID != "C0ABC" || !ch.IsMember || ch.Name == "" {
		t.Fatalf("conversations.info: %+v %v", ch, err)
	}
}

func TestSlacktestDefaultsRecorded(t *testing.T) {
	fake, api := setup(t)
	u, err := api.GetUserInfo("W012A3CDE")
	if err != nil || u.ID == "" {
		t.Fatalf("users.info via slacktest: %+v %v", u, err)
	}
	fake.FailNext("users.info", 1, http.StatusTooManyRequests, 2, "")
	_, err = api.GetUserInfo("W012A3CDE")
	var rl *slack.RateLimitedError
	if !errors.As(err, &rl) {
		t.Fatalf("FailNext on a default route: %v", err)
	}
	_, err = api.GetBotInfo(slack.GetBotInfoParameters{Bot: "B1"})
	if err != nil {
		t.Fatalf("bots.info via slacktest: %v", err)
	}
	// A method nobody serves answers 404 and is still recorded.
	_, err = api.GetEmoji()
	var sc slack.StatusCodeError
	if !errors.As(err, &sc) || sc.Code != http.StatusNotFound {
		t.Fatalf("unknown method: %v", err)
	}
	var methods []string
	for _, c := range fake.Calls() {
		methods = append(methods, fmt.Sprintf("%s:%d", c.Method, c.Status))
	}
	if fmt.Sprint(methods) != "[users.info:200 users.info:429 bots.info:200 emoji.list:404]" {
		t.Fatalf("calls %v", methods)
	}
}

func TestBlockLimits(t *testing.T) {
	_, api := setup(t)
	long := strings.Repeat("x", 3001)
	_, _, err := api.PostMessage("C1", slack.MsgOptionBlocks(slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, long, false, false), nil, nil)))
	var se slack.SlackErrorResponse
	if !errors.As(err, &se) || se.Err != "invalid_blocks" || len(se.ResponseMetadata.Messages) == 0 {
		t.Fatalf("want invalid_blocks with messages, got %v", err)
	}
	var many []slack.Block
	for range 51 {
		many = append(many, slack.NewDividerBlock())
	}
	_, _, err = api.PostMessage("C1", slack.MsgOptionBlocks(many...))
	if got := slackErr(t, err); got != "invalid_blocks" {
		t.Fatalf("51 blocks: %q", got)
	}
	// Two buttons of one actions block with the same action_id (as the
	// approval message once had) are refused; distinct IDs pass.
	btn := func(id, v string) slack.BlockElement {
		return slack.NewButtonBlockElement(id, v, slack.NewTextBlockObject(slack.PlainTextType, v, false, false))
	}
	_, _, err = api.PostMessage("C1", slack.MsgOptionBlocks(slack.NewActionBlock("a", btn("x", "approve"), btn("x", "deny"))))
	if got := slackErr(t, err); got != "invalid_blocks" {
		t.Fatalf("duplicate action_id: %q", got)
	}
	if _, _, err = api.PostMessage("C1", slack.MsgOptionBlocks(slack.NewActionBlock("a", btn("x:1", "approve"), btn("x:2", "deny")))); err != nil {
		t.Fatalf("distinct action_ids: %v", err)
	}
	_, _, err = api.PostMessage("C1")
	if got := slackErr(t, err); got != "no_text" {
		t.Fatalf("empty message: %q", got)
	}
}

func TestText(t *testing.T) {
	fake, api := setup(t)
	blocks := []slack.Block{
		slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, "Head", false, false)),
		slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, "Body", false, false),
			[]*slack.TextBlockObject{slack.NewTextBlockObject(slack.MarkdownType, "*F1*", false, false), slack.NewTextBlockObject(slack.MarkdownType, "F2", false, false)}, nil),
		slack.NewContextBlock("", slack.NewTextBlockObject(slack.MarkdownType, "ctx note", false, false)),
		slack.NewRichTextBlock("", slack.NewRichTextSection(
			slack.NewRichTextSectionTextElement("rich ", nil),
			slack.NewRichTextSectionUserElement("U7", nil),
			slack.NewRichTextSectionLinkElement("https://example.com", "", nil),
		)),
	}
	if _, _, err := api.PostMessage("C1", slack.MsgOptionText("fallback", false), slack.MsgOptionBlocks(blocks...)); err != nil {
		t.Fatal(err)
	}
	got := fake.Text(fake.Calls()[0])
	want := "fallback\nHead\nBody\n*F1*\nF2\nctx note\nrich \n<@U7>\nhttps://example.com"
	if got != want {
		t.Fatalf("Text:\n%q\nwant\n%q", got, want)
	}
	if m := fake.Messages("C1")[0]; m.AllText() != want {
		t.Fatalf("AllText: %q", m.AllText())
	}
}

// TestConcurrent is for -race: many goroutines posting and updating.
func TestConcurrent(t *testing.T) {
	fake, api := setup(t)
	const workers, each = 8, 20
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch := fmt.Sprintf("C%d", w%2)
			for i := range each {
				_, ts, err := api.PostMessage(ch, slack.MsgOptionText(fmt.Sprint(i), false))
				if err == nil {
					_, _, _, err = api.UpdateMessage(ch, ts, slack.MsgOptionText("u", false))
				}
				if err != nil {
					errc <- err
					return
				}
				_ = fake.Calls()
				_ = fake.Messages(ch)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ch := range []string{"C0", "C1"} {
		msgs := fake.Messages(ch)
		if len(msgs) != workers/2*each {
			t.Fatalf("%s: %d messages", ch, len(msgs))
		}
		for i, m := range msgs {
			if seen[m.TS] || m.Updates != 1 || (i > 0 && m.TS <= msgs[i-1].TS) {
				t.Fatalf("bad message %+v", m)
			}
			seen[m.TS] = true
		}
	}
	fake.Reset()
	if len(fake.Calls()) != 0 || len(fake.Messages("C0")) != 0 {
		t.Fatal("Reset should forget calls and messages")
	}
}

func BenchmarkPostMessage(b *testing.B) {
	fake := slackfake.New()
	defer fake.Close()
	api := slack.New(token, slack.OptionAPIURL(fake.APIURL()))
	for i := 0; b.Loop(); i++ {
		if _, _, err := api.PostMessage("C1", slack.MsgOptionText("x", false)); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			fake.Reset()
		}
	}
}
