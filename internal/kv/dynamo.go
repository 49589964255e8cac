package kv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// DynamoDBAPI is the part of DynamoDB the store uses.
type DynamoDBAPI interface {
	GetItem(context.Context, *dynamodb.GetItemInput, ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	PutItem(context.Context, *dynamodb.PutItemInput, ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error)
	DeleteItem(context.Context, *dynamodb.DeleteItemInput, ...func(*dynamodb.Options)) (*dynamodb.DeleteItemOutput, error)
	Query(context.Context, *dynamodb.QueryInput, ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error)
	CreateTable(context.Context, *dynamodb.CreateTableInput, ...func(*dynamodb.Options)) (*dynamodb.CreateTableOutput, error)
	DescribeTable(context.Context, *dynamodb.DescribeTableInput, ...func(*dynamodb.Options)) (*dynamodb.DescribeTableOutput, error)
}

// Dynamo keeps items in one DynamoDB table: partition key "t" (the
// table), sort key "k" (the key), value "v", version "ver". Reads are
// strongly consistent; writes are conditional on "ver".
type Dynamo struct {
	API   DynamoDBAPI
	Table string
}

// EnsureTable creates the table on first start (on-demand capacity) and
// waits until it is active. The same table as a CLI command is in the
// README.
func (d Dynamo) EnsureTable(ctx context.Context) error {
	_, err := d.API.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(d.Table)})
	var nf *ddbtypes.ResourceNotFoundException
	if err == nil {
		return nil
	}
	if !errors.As(err, &nf) {
		return fmt.Errorf("kv: describe table %s: %w", d.Table, err)
	}
	_, err = d.API.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:   aws.String(d.Table),
		BillingMode: ddbtypes.BillingModePayPerRequest,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{
			{AttributeName: aws.String("t"), AttributeType: ddbtypes.ScalarAttributeTypeS},
			{AttributeName: aws.String("k"), AttributeType: ddbtypes.ScalarAttributeTypeS},
		},
		KeySchema: []ddbtypes.KeySchemaElement{
			{AttributeName: aws.String("t"), KeyType: ddbtypes.KeyTypeHash},
			{AttributeName: aws.String("k"), KeyType: ddbtypes.KeyTypeRange},
		},
	})
	var inUse *ddbtypes.ResourceInUseException
	if err != nil && !errors.As(err, &inUse) { // the other replica made it first
		return fmt.Errorf("kv: create table %s: %w", d.Table, err)
	}
	w := dynamodb.NewTableExistsWaiter(d.API)
	return w.Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(d.Table)}, 2*time.Minute)
}

func key(table, k string) map[string]ddbtypes.AttributeValue {
	return map[string]ddbtypes.AttributeValue{"t": &ddbtypes.AttributeValueMemberS{Value: table}, "k": &ddbtypes.AttributeValueMemberS{Value: k}}
}

func itemOf(m map[string]ddbtypes.AttributeValue) (Item, error) {
	var it Item
	if k, ok := m["k"].(*ddbtypes.AttributeValueMemberS); ok {
		it.Key = k.Value
	}
	if v, ok := m["v"].(*ddbtypes.AttributeValueMemberB); ok {
		it.Value = v.Value
	}
	ver, ok := m["ver"].(*ddbtypes.AttributeValueMemberN)
	if !ok {
		return it, fmt.Errorf("kv: item %s has no version", it.Key)
	}
	n, err := strconv.ParseInt(ver.Value, 10, 64)
	it.Version = n
	return it, err
}

func (d Dynamo) Get(ctx context.Context, table, k string) (Item, error) {
	out, err := d.API.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(d.Table), Key: key(table, k), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return Item{}, fmt.Errorf("kv: get %s/%s: %w", table, k, err)
	}
	if len(out.Item) == 0 {
		return Item{}, ErrNotFound
	}
	return itemOf(out.Item)
}

func conditional(err error) bool {
	var cf *ddbtypes.ConditionalCheckFailedException
	return errors.As(err, &cf)
}

func (d Dynamo) Put(ctx context.Context, table, k string, value []byte, version int64) (int64, error) {
	item := key(table, k)
	item["v"] = &ddbtypes.AttributeValueMemberB{Value: value}
	item["ver"] = &ddbtypes.AttributeValueMemberN{Value: strconv.FormatInt(version+1, 10)}
	in := &dynamodb.PutItemInput{TableName: aws.String(d.Table), Item: item}
	if version == 0 {
		in.ConditionExpression = aws.String("attribute_not_exists(k)")
	} else {
		in.ConditionExpression = aws.String("ver = :v")
		in.ExpressionAttributeValues = map[string]ddbtypes.AttributeValue{":v": &ddbtypes.AttributeValueMemberN{Value: strconv.FormatInt(version, 10)}}
	}
	if _, err := d.API.PutItem(ctx, in); err != nil {
		if conditional(err) {
			return 0, fmt.Errorf("%s/%s is not at version %d: %w", table, k, version, ErrConflict)
		}
		return 0, fmt.Errorf("kv: put %s/%s: %w", table, k, err)
	}
	return version + 1, nil
}

func (d Dynamo) Delete(ctx context.Context, table, k string, version int64) error {
	_, err := d.API.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(d.Table), Key: key(table, k),
		ConditionExpression:       aws.String("ver = :v"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":v": &ddbtypes.AttributeValueMemberN{Value: strconv.FormatInt(version, 10)}}})
	if conditional(err) {
		return fmt.Errorf("%s/%s is not at version %d: %w", table, k, version, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("kv: delete %s/%s: %w", table, k, err)
	}
	return nil
}

func (d Dynamo) List(ctx context.Context, table string) ([]Item, error) {
	var out []Item
	pg := dynamodb.NewQueryPaginator(d.API, &dynamodb.QueryInput{TableName: aws.String(d.Table), ConsistentRead: aws.Bool(true),
		KeyConditionExpression:    aws.String("t = :t"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":t": &ddbtypes.AttributeValueMemberS{Value: table}}})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("kv: list %s: %w", table, err)
		}
		for _, m := range page.Items {
			it, err := itemOf(m)
			if err != nil {
				return nil, err
			}
			out = append(out, it)
		}
	}
	slices.SortFunc(out, func(a, b Item) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

func (d Dynamo) Last(ctx context.Context, table string, n int) ([]Item, error) {
	var out []Item
	pg := dynamodb.NewQueryPaginator(d.API, &dynamodb.QueryInput{TableName: aws.String(d.Table), ConsistentRead: aws.Bool(true),
		ScanIndexForward: aws.Bool(false), Limit: aws.Int32(int32(min(n, 1000))),
		KeyConditionExpression:    aws.String("t = :t"),
		ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":t": &ddbtypes.AttributeValueMemberS{Value: table}}})
	for pg.HasMorePages() && len(out) < n {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("kv: last of %s: %w", table, err)
		}
		for _, m := range page.Items {
			if len(out) == n {
				break
			}
			it, err := itemOf(m)
			if err != nil {
				return nil, err
			}
			out = append(out, it)
		}
	}
	return out, nil
}
