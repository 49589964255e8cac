// Command failover measures a cold failover against moto, the bot's way
// and the runbook's way, on the same moto in one run, and prints a table:
//
//		go run ./bench/failover        (make bench-failover)
//
//	  - the bot: an approved `failover --to <standby>` (secondary-ip
//	    discovery) from the approval to the verified replica, through the
//	    real app (fence, confirm, move the IP and check it left, retag,
//	    start the app through SSM, status checks);
//	  - the seed's manual steps as an aws CLI script: find the box, stop it
//	    and wait, move the secondary IP with allow-reassignment, start the
//	    app with `replicated app … start` through SSM, read the status.
//
// Both talk to moto through a counting proxy, so the table shows the AWS
// API calls each made. Needs moto_server and the aws CLI on PATH.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/circlebot/circlebot/internal/app"
	"github.com/circlebot/circlebot/internal/approvals"
	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/config"
	"github.com/circlebot/circlebot/internal/journal"
	"github.com/circlebot/circlebot/internal/sandbox"
	"github.com/circlebot/circlebot/internal/slackio"
	"github.com/circlebot/circlebot/internal/testenv/faultproxy"
	"github.com/circlebot/circlebot/internal/testenv/motoserver"
	"github.com/circlebot/circlebot/internal/testenv/slackfake"
)

func main() {
	runs := flag.Int("runs", 5, "failovers of each kind")
	flag.Parse()
	if err := run(*runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// manual is the runbook's cold fail-over, step 2 ("step down"), as an
// on-call engineer would type it, with the IP move from "Discovery and
// re-association of builders".
const manual = `set -euo pipefail
P=$(aws ec2 describe-instances --filters Name=tag:Name,Values=circleci_services Name=instance-state-name,Values=running --query 'Reservations[0].Instances[0].InstanceId' --output text)
PENI=$(aws ec2 describe-instances --instance-ids "$P" --query 'Reservations[0].Instances[0].NetworkInterfaces[0].NetworkInterfaceId' --output text)
IP=$(aws ec2 describe-network-interfaces --network-interface-ids "$PENI" --query 'NetworkInterfaces[0].PrivateIpAddresses[?Primary==` + "`false`" + `].PrivateIpAddress | [0]' --output text)
# 1. Ensure that the initial machine actually is dead.
aws ec2 stop-instances --instance-ids "$P" >/dev/null
aws ec2 wait instance-stopped --instance-ids "$P"
# 2. Re-associate the private IP address of the original node to the replica.
RENI=$(aws ec2 describe-instances --instance-ids "$R" --query 'Reservations[0].Instances[0].NetworkInterfaces[0].NetworkInterfaceId' --output text)
aws ec2 unassign-private-ip-addresses --network-interface-id "$PENI" --private-ip-addresses "$IP"
aws ec2 assign-private-ip-addresses --network-interface-id "$RENI" --private-ip-addresses "$IP" --allow-reassignment
# 3. Start the CircleCI Enterprise processes on the new node.
CMD=$(aws ssm send-command --instance-ids "$R" --document-name AWS-RunShellScript --parameters 'commands=["sudo replicated app $(sudo replicated apps | grep Enterprise | awk '"'"'{print $1;}'"'"') start"]' --query Command.CommandId --output text)
aws ssm wait command-executed --command-id "$CMD" --instance-id "$R"
aws ec2 describe-instance-status --instance-ids "$R" --query 'InstanceStatuses[0].InstanceStatus.Status' --output text >/dev/null
`

type result struct {
	took  time.Duration
	calls int
}

// work is the bot's AWS work alone (first step start to last step end),
// without the final Slack update's 1/s pacing.
var work []time.Duration

func run(runs int) error {
	if _, err := exec.LookPath("aws"); err != nil {
		return fmt.Errorf("the aws CLI is needed for the manual side: %w", err)
	}
	ctx := context.Background()
	moto, err := motoserver.Start(ctx)
	if err != nil {
		return err
	}
	defer moto.Close()
	proxy := faultproxy.New(moto.URL, faultproxy.Faults{})
	defer proxy.Close()

	var bot, cli []result
	for i := range runs {
		r, err := botFailover(ctx, moto, proxy)
		if err != nil {
			return fmt.Errorf("bot run %d: %w", i, err)
		}
		bot = append(bot, r)
		r, err = cliFailover(ctx, moto, proxy)
		if err != nil {
			return fmt.Errorf("manual run %d: %w", i, err)
		}
		cli = append(cli, r)
	}
	fmt.Printf("Cold failover to a standby in the same subnet (moto_server, %d runs each)\n\n", runs)
	fmt.Printf("%-58s %10s %10s %12s\n", "how", "median", "max", "AWS calls")
	row := func(name string, rs []result) {
		slices.SortFunc(rs, func(a, b result) int { return int(a.took - b.took) })
		calls := []int{}
		for _, r := range rs {
			calls = append(calls, r.calls)
		}
		slices.Sort(calls)
		fmt.Printf("%-58s %10s %10s %12d\n", name, rs[len(rs)/2].took.Round(time.Millisecond), rs[len(rs)-1].took.Round(time.Millisecond), calls[len(calls)/2])
	}
	row("bot: approved failover, fence..verify, incl. Slack", bot)
	ws := make([]result, len(work))
	for i, w := range work {
		ws[i] = result{took: w, calls: bot[0].calls}
	}
	row("bot: the same, AWS work only (journal step times)", ws)
	row("runbook: the seed's steps as an aws CLI script", cli)
	fmt.Println("\nThe bot also confirms the fence before the IP moves, checks the IP left the old\ninterface, retags both boxes and records every step; the script does none of that.")
	return nil
}

// seed resets moto and makes the install plus a standby in the box's
// subnet; it returns the standby's ID.
func seed(ctx context.Context, moto *motoserver.Server) (*sandbox.Install, string, error) {
	if err := moto.Reset(ctx); err != nil {
		return nil, "", err
	}
	direct := motoserver.AWSConfig(moto.URL)
	inst, err := sandbox.Seed(ctx, direct, sandbox.Options{})
	if err != nil {
		return nil, "", err
	}
	out, err := ec2.NewFromConfig(direct).RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String(inst.ImageID), InstanceType: ec2types.InstanceType(inst.ServicesBox.Type), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		SubnetId: aws.String(inst.ServicesBox.SubnetID), SecurityGroupIds: []string{inst.SecurityGroupID},
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("Name"), Value: aws.String("circleci_services_standby")}}}},
	})
	if err != nil {
		return nil, "", err
	}
	return inst, aws.ToString(out.Instances[0].InstanceId), nil
}

func botFailover(ctx context.Context, moto *motoserver.Server, proxy *faultproxy.Proxy) (result, error) {
	_, standby, err := seed(ctx, moto)
	if err != nil {
		return result{}, err
	}
	fake := slackfake.New()
	defer fake.Close()
	dir, _ := os.MkdirTemp("", "circlebot-bench-")
	defer os.RemoveAll(dir)
	cfg := config.Defaults()
	cfg.DataDir = dir
	cfg.Slack.AllowedChannels = []string{"C0INCIDENT"}
	cfg.Roles.Operators = []string{"U0ALICE"}
	cfg.Roles.Approvers = []string{"U0BOB"}
	cfg.Secrets = config.SecretsFromEnv(func(k string) string {
		return map[string]string{"SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": "bench", "SLACK_API_URL": fake.APIURL()}[k]
	})
	awsCfg := motoserver.AWSConfig(proxy.URL)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(ctx, app.Options{Config: cfg, Version: "bench", AWS: &awsCfg, Log: log})
	if err != nil {
		return result{}, err
	}
	defer a.Close()
	a.Failover.Poll = 100 * time.Millisecond
	web := slackio.NewWeb("xoxb-bench", fake.APIURL(), log)
	handle := func(user, text string) {
		a.Bot.Handle(ctx, chat.Request{ID: "bench", UserID: user, ChannelID: "C0INCIDENT", Text: text, Source: "bench"}, web.For(chat.Request{ChannelID: "C0INCIDENT", UserID: user}))
	}
	handle("U0ALICE", "failover --to "+standby)
	reqs, err := a.Approvals.Store.All(ctx)
	if err != nil || len(reqs) != 1 || reqs[0].State != approvals.Pending {
		return result{}, fmt.Errorf("no pending request (%v)", err)
	}
	proxy.Reset()
	start := time.Now()
	handle("U0BOB", "approve "+reqs[0].ID)
	took := time.Since(start)
	op, err := a.Journal.ByRequest(ctx, reqs[0].ID)
	if err != nil || op.State != journal.Done {
		return result{}, fmt.Errorf("failover did not finish: %v %+v", err, op)
	}
	work = append(work, op.Elapsed(time.Now()))
	return result{took: took, calls: awsCalls(proxy)}, nil
}

func awsCalls(p *faultproxy.Proxy) int {
	n := 0
	for _, c := range p.Calls() {
		if c.Service != "" {
			n++
		}
	}
	return n
}

func cliFailover(ctx context.Context, moto *motoserver.Server, proxy *faultproxy.Proxy) (result, error) {
	_, standby, err := seed(ctx, moto)
	if err != nil {
		return result{}, err
	}
	proxy.Reset()
	cmd := exec.CommandContext(ctx, "bash", "-c", manual)
	cmd.Env = append(os.Environ(), "AWS_ENDPOINT_URL="+proxy.URL, "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test",
		"AWS_DEFAULT_REGION=us-east-1", "AWS_REGION=us-east-1", "AWS_PAGER=", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "R="+standby)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return result{}, fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return result{took: took, calls: awsCalls(proxy)}, nil
}
